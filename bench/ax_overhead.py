"""The AX worker's own overhead per token against simulated NPU time.

The default model is exported in the AX layout (once, into the cache) and served by the AX engine
on the onnxruntime mirror with simulated board timing: every graph run is padded to the
published AX650N / AX630C latency (npuflow/engine/ax_timing.py), and the time spent inside graph
runs is counted as NPU time. Everything else in the decode loop (the engine's Python, KV copies,
embedding lookup, the scheduler, sampling, detokenization) is the worker's overhead.

    .venv/bin/python bench/ax_overhead.py --chip ax650n --tokens 128
    .venv/bin/python bench/ax_overhead.py --chip ax630c --ax-dir /path/to/exported/model
    .venv/bin/python bench/ax_overhead.py --wait spin     # keep the core busy during NPU time

Target: overhead <= 2% of NPU time per token.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from default_ax import export_default  # noqa: E402  (bench/ is the script's folder)


class Replay:
    """A session that runs the onnxruntime mirror once per shape group and then returns copies of
    those outputs at once: realistic shapes, dtypes and logits with no compute on the host, so
    the time outside graph runs is the worker's alone (on a board the NPU computes, not the CPU)."""

    def __init__(self, path):
        from npuflow.engine.ax_ort import InferenceSession
        self.wrapped = InferenceSession(str(path))
        self._cache: dict[int, list] = {}

    def get_inputs(self, shape_group=0):
        return self.wrapped.get_inputs(shape_group)

    def get_outputs(self, shape_group=0):
        return self.wrapped.get_outputs(shape_group)

    def run(self, names, feed, run_options=None, shape_group=0):
        if shape_group not in self._cache:
            self._cache[shape_group] = self.wrapped.run(names, feed, shape_group=shape_group)
        return [a.copy() for a in self._cache[shape_group]]


def run(engine, package, prompt, n_tokens, streams, sampling):
    from npuflow.llm_worker.detok import load_token_table
    from npuflow.llm_worker.request import ModelLimits
    from npuflow.llm_worker.scheduler import Scheduler
    from npuflow.v1 import common_pb2, worker_pb2

    limits = ModelLimits("bench", engine.vocab_size, engine.context_length, tuple(package.eos_token_ids), {})
    sched = Scheduler(engine, load_token_table(package.tokenizer_path, engine.vocab_size), limits, max_queue=64)
    for i in range(streams):
        sched.submit(worker_pb2.GenerateRequest(
            request_id=f"r{i}", prompt_token_ids=prompt, sampling=common_pb2.SamplingParams(
                max_tokens=n_tokens, ignore_eos=True, seed=i, **sampling)), b"peer")
    while sched.waiting or any(c.prefilling for c in sched.running):   # prefill (and first tokens)
        sched.step()
    tokens, dev0, t0 = 0, engine.clock.device_s, time.perf_counter()
    per_step = []
    while sched.has_work:
        s0, d0 = time.perf_counter(), engine.clock.device_s
        events = sched.step()
        got = sum(len(ev.token_ids) for _, ev in events)
        tokens += got
        if got:
            per_step.append(((time.perf_counter() - s0) - (engine.clock.device_s - d0), got))
    wall, device = time.perf_counter() - t0, engine.clock.device_s - dev0
    return tokens, wall, device, per_step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chip", default="ax650n", help="ax650n | ax630c")
    p.add_argument("--ax-dir", default="", help="an exported AX model (default: export the default model)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--prefill", type=int, default=128)
    p.add_argument("--kv", type=int, default=512)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--compute", choices=("replay", "mirror"), default="replay",
                   help="replay: recorded graph outputs (the worker's cost alone); mirror: run the onnxruntime "
                        "graphs inside the simulated NPU window (their CPU use competes with the worker)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of greedy and sampled decoding")
    p.add_argument("--wait", choices=("sleep", "spin"), default="sleep",
                   help="how the simulated NPU time passes: sleep (the worker's thread idles, as it blocks on a "
                        "board; on a shared VM its caches go cold meanwhile) or spin (the core stays busy and warm)")
    args = p.parse_args()

    from npuflow.config import load_settings
    from npuflow.engine import ax_timing
    from npuflow.engine.ax import AxEngine
    from npuflow.logs import setup_logging
    from npuflow.models.ax_package import read_ax_package
    setup_logging("warning")
    if args.wait == "spin":
        ax_timing.SPIN_S = float("inf")
    cache = pathlib.Path(load_settings().server.cache_dir)
    ax_dir = pathlib.Path(args.ax_dir) if args.ax_dir else export_default(cache, args.prefill, args.kv)
    package = read_ax_package(ax_dir)
    factory = Replay if args.compute == "replay" else None
    engine = AxEngine(package, max_slots=args.streams, session_factory=factory, simulate_timing=args.chip)
    prompt = list(range(100, 140))
    print(f"model {package.id}: {package.dims.layers} layers, vocab {engine.vocab_size}, "
          f"kv {engine.context_length}, chip {args.chip}, {args.streams} stream(s), {args.tokens} tokens each, "
          f"graphs: {args.compute}, NPU wait: {args.wait}")
    configs = (("greedy", {"temperature": 0.0}), ("sampled t=0.7 top_p=0.9", {"temperature": 0.7, "top_p": 0.9}))
    shares: dict[str, list[float]] = {label: [] for label, _ in configs}
    for rnd in range(args.rounds):                       # alternating, so drift hits both alike
        for label, sampling in configs:
            tokens, wall, device, steps = run(engine, package, prompt, args.tokens, args.streams, sampling)
            over = wall - device
            per_tok = [o / n for o, n in steps]
            shares[label].append(100 * over / device)
            print(f"round {rnd} {label:>24}: {tokens} tokens, NPU {1e3 * device / tokens:.2f} ms/token, worker overhead "
                  f"{1e3 * over / tokens:.3f} ms/token (median {1e3 * statistics.median(per_tok):.3f}) = "
                  f"{shares[label][-1]:.2f}% of NPU time, {tokens / wall:.1f} tok/s")
    for label, vals in shares.items():
        print(f"{label:>24}: overhead median {statistics.median(vals):.2f}% of NPU time over {len(vals)} round(s) "
              f"(min {min(vals):.2f}%, max {max(vals):.2f}%)")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
