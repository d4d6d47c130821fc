"""Where the float32 embedding graph's time goes, and how fast this CPU multiplies matrices.

    python bench/embed_gemm.py [--threads 2] [--runs 10] [--dir ~/.cache/npuflow-bench/minilm]

Uses bench/embeddings.py's float32 package (MiniLM dimensions; built there on first use). One
onnxruntime session with `threads` intra-op threads runs the graph on 64 rows of 32 tokens, with
onnxruntime's profiler on: printed are the time per run, each op type's share, and the rate of the
MatMul nodes in GFLOP/s (the model's linear layers: 2 * rows * in * out per layer, attention's
own products apart). Then torch (torch.set_num_threads(threads)) multiplies float32 matrices of
the same four shapes the linear layers have ([rows, in] x [in, out]), and one 4096-square product:
its GFLOP/s is the ceiling sentence-transformers' linear layers run at on this machine.
No server is started: this explains bench/embeddings.py's float32 figure, it does not replace it.
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parent)]
import embeddings  # noqa: E402  (its build() and MINILM dimensions)


def median_s(f, runs: int) -> float:
    for _ in range(3):
        f()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--dir", type=pathlib.Path, default=pathlib.Path.home() / ".cache" / "npuflow-bench" / "minilm")
    a = p.parse_args()
    import onnxruntime as ort
    import torch

    a.dir.mkdir(parents=True, exist_ok=True)
    _, f32, _ = embeddings.build(a.dir)
    H, F, L = embeddings.MINILM["hidden"], embeddings.MINILM["ffn"], embeddings.MINILM["layers"]
    rows = embeddings.INPUTS * embeddings.TOKENS
    shapes = [(H, 3 * H), (H, H), (H, F), (F, H)]            # qkv, output, up, down
    linear_flop = L * sum(2 * rows * k * n for k, n in shapes)

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = a.threads, 1
    so.enable_profiling = True
    so.profile_file_prefix = str(pathlib.Path(tempfile.gettempdir()) / "npuflow-embed-gemm")
    sess = ort.InferenceSession(str(f32 / "model.onnx"), so, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(1000, embeddings.VOCAB, (embeddings.INPUTS, embeddings.TOKENS))
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones_like(ids, dtype=np.int64)}
    per_run = median_s(lambda: sess.run(None, feeds), a.runs)
    trace = pathlib.Path(sess.end_profiling())
    by_op: collections.Counter = collections.Counter()
    for e in json.loads(trace.read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    trace.unlink()
    total = sum(by_op.values())
    n_runs = a.runs + 3
    print(f"onnxruntime, {a.threads} threads: {1000 * per_run:.1f} ms per run "
          f"({embeddings.INPUTS / per_run:.1f} inputs/s), {linear_flop / 1e9:.1f} GFLOP in the linear layers")
    for op, us in by_op.most_common(6):
        print(f"  {op:24s} {us / n_runs / 1000:7.1f} ms  {100 * us / total:5.1f} %")
    print(f"  MatMul nodes: {linear_flop / (by_op['MatMul'] / n_runs / 1e6) / 1e9:.1f} GFLOP/s")

    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, float32:")
    for k, n in shapes:
        x, w = torch.randn(rows, k), torch.randn(k, n)
        t = median_s(lambda: x @ w, a.runs)
        print(f"  [{rows}, {k}] x [{k}, {n}]: {2 * rows * k * n / t / 1e9:7.1f} GFLOP/s")
    x = torch.randn(4096, 4096)
    t = median_s(lambda: x @ x, max(3, a.runs // 3))
    print(f"  [4096, 4096] x [4096, 4096]: {2 * 4096 ** 3 / t / 1e9:7.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
