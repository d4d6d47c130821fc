"""Prefill and decode speed and peak RSS of the CPU engine on the default model, next to
llama.cpp (llama-cpp-python) on the same GGUF when it is installed.

    python bench/engine.py [--threads 2] [--prompt 100] [--gen 128] [--repeat 3] [--rounds 1]

Each engine runs in a fresh subprocess so its peak RSS is its own. The prompt is real text cut
to --prompt tokens; generation is greedy for --gen tokens (the first comes from the prefill).
With --rounds N the two engines run alternately N times (for a machine that others load too);
the table shows medians over rounds and the ratio line is the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
        "combined movable metal type, oil-based inks and a wooden press adapted from wine making. "
        "Books became cheaper, literacy spread across Europe, and scientists could share results "
        "quickly. Today, a small language model can summarise such a story in a few sentences, and "
        "engineers measure how many tokens per second it reads and writes on a modest computer "
        "with only two cores and a few gigabytes of memory, which is what this benchmark reports.")


def _prompt(tokenizer_path: str, n: int) -> list[int]:
    from tokenizers import Tokenizer
    ids = Tokenizer.from_file(tokenizer_path).encode(TEXT * 4).ids
    return ids[:n]


def child_ours(args) -> dict:
    import numpy as np

    from npuflow.engine.cpu import CpuEngine
    from npuflow.models.package import load_package
    pkg = load_package(args.package)
    prompt = _prompt(str(pkg.tokenizer_path), args.prompt)
    eng = CpuEngine(pkg, max_slots=1, context_length=2048, threads=args.threads)
    eng.prefill(0, prompt[:8])           # warm-up
    eng.decode([0], [1])
    runs = []
    for _ in range(args.repeat):
        eng.release(0)
        t0 = time.perf_counter()
        tok = int(np.argmax(eng.prefill(0, prompt)))
        t1 = time.perf_counter()
        for _ in range(args.gen - 1):
            tok = int(np.argmax(eng.decode([0], [tok])[0]))
        t2 = time.perf_counter()
        runs.append((len(prompt) / (t1 - t0), (args.gen - 1) / (t2 - t1)))
    return _result(runs)


def child_llama(args) -> dict:
    from llama_cpp import Llama
    llm = Llama(args.gguf, n_threads=args.threads, n_threads_batch=args.threads, n_ctx=2048, n_batch=512,
                verbose=False)
    prompt = _prompt(args.tokenizer, args.prompt)
    next(llm.generate(prompt[:8], temp=0.0, top_k=1, reset=True))
    runs = []
    for _ in range(args.repeat):
        llm.reset()
        t0 = time.perf_counter()
        gen = llm.generate(prompt, temp=0.0, top_k=1, reset=True)
        next(gen)
        t1 = time.perf_counter()
        for _ in range(args.gen - 1):
            next(gen)
        t2 = time.perf_counter()
        runs.append((len(prompt) / (t1 - t0), (args.gen - 1) / (t2 - t1)))
    return _result(runs)


def _result(runs) -> dict:
    return {"prefill_tps": statistics.median(r[0] for r in runs), "decode_tps": statistics.median(r[1] for r in runs),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_child(kind: str, args, extra: list[str]) -> dict | None:
    cmd = [sys.executable, __file__, "--child", kind, "--threads", str(args.threads), "--prompt", str(args.prompt),
           "--gen", str(args.gen), "--repeat", str(args.repeat), *extra]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print(f"{kind}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=100)
    p.add_argument("--gen", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--child", choices=["ours", "llama"], help=argparse.SUPPRESS)
    p.add_argument("--package", help=argparse.SUPPRESS)
    p.add_argument("--gguf", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child_ours(args) if args.child == "ours" else child_llama(args)))
        return 0

    from npuflow.config import load_settings
    from npuflow.models.resolve import DEFAULT_MODEL_ID, resolve_model
    cache = args.cache_dir or load_settings().server.cache_dir
    pkg = resolve_model("default", cache, DEFAULT_MODEL_ID)
    print(f"model {pkg.id} ({pkg.path}), threads={args.threads}, prompt={args.prompt} tokens, "
          f"generate={args.gen} tokens, median of {args.repeat}")
    try:
        import llama_cpp
        llama_name = f"llama.cpp {llama_cpp.__version__}"
    except ImportError:
        llama_name = None
        print("llama_cpp not importable: no comparison")
    results: dict[str, list[dict]] = {"ours": [], "llama": []}
    for r in range(args.rounds):
        ours = _run_child("ours", args, ["--package", str(pkg.path)])
        if ours is None:
            return 1
        results["ours"].append(ours)
        if llama_name:
            theirs = _run_child("llama", args, ["--gguf", pkg.extra["source"]["path"], "--tokenizer", str(pkg.tokenizer_path)])
            if theirs:
                results["llama"].append(theirs)
        if args.rounds > 1:
            line = f"round {r + 1}: ours decode {ours['decode_tps']:.1f} tok/s"
            if llama_name and theirs:
                line += f", llama.cpp {theirs['decode_tps']:.1f} tok/s, ratio {ours['decode_tps'] / theirs['decode_tps']:.2f}"
            print(line, flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items() if v}
    rows = [("npuflow cpu", med.get("ours"))]
    if "llama" in med:
        rows.append((llama_name, med["llama"]))
    print(f"{'engine':<22}{'prefill tok/s':>15}{'decode tok/s':>15}{'peak RSS MiB':>15}")
    for name, r in rows:
        if r:
            print(f"{name:<22}{r['prefill_tps']:>15.1f}{r['decode_tps']:>15.1f}{r['peak_rss_mib']:>15.0f}")
    if len(results["llama"]) == len(results["ours"]):
        ratio = {m: statistics.median(a[m] / b[m] for a, b in zip(results["ours"], results["llama"]))
                 for m in ("prefill_tps", "decode_tps", "peak_rss_mib")}
        print(f"{'ours / llama.cpp':<22}{ratio['prefill_tps']:>15.2f}{ratio['decode_tps']:>15.2f}{ratio['peak_rss_mib']:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
