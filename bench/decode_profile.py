#!/usr/bin/env python3
"""Where the milliseconds of a decode step go: the CPU engine on the default model, with
onnxruntime's profiler on.

    python bench/decode_profile.py [--batch 1] [--context 100] [--steps 64] [--threads 2]
                                   [--kv-cache float32|int8]

Prefills --batch slots with --context tokens each, then runs --steps decode steps over all of
them, twice: first with the profiler off (the step's true wall time, engine.decode: embedding
lookup, binding, the graph run, the logits), then on, for the graph run's own time
(onnxruntime's model_run event) and the time per operator type (the sum over a step's nodes of
that type). The profiler slows every node a little, so the split is given in ms under the
profiler and as a share, and the last column applies that share to the unprofiled step: where
each millisecond of a real step goes. Medians over steps for the totals, means for the split.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=100)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slots", type=int, default=0, help="engine slots (0 = --batch)")
    ap.add_argument("--kv-cache", default="float32", choices=("float32", "int8"))
    a = ap.parse_args()

    import npuflow.engine.cpu as cpu
    from npuflow.config import load_settings
    from npuflow.models.resolve import resolve_model
    settings = load_settings(env={k: v for k, v in os.environ.items() if k == "NPUFLOW_CACHE_DIR"})
    pkg = resolve_model("default", settings.server.cache_dir, "smollm2-135m-instruct")

    plain = cpu.session_options

    def profiled(*args, **kw):
        opts = plain(*args, **kw)
        opts.enable_profiling = True
        opts.profile_file_prefix = "/tmp/npuflow-decode-profile"
        return opts

    plain_ms, _ = steps(cpu, pkg, a)
    cpu.session_options = profiled
    wall_ms, eng = steps(cpu, pkg, a)
    path = eng._sess.end_profiling()
    events = json.load(open(path))
    os.unlink(path)
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    runs = runs[-a.steps:]
    lo = runs[0]["ts"]
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= lo:
            per_op[e["args"].get("op_name", "?")] += e["dur"]
    run_ms = statistics.median(r["dur"] for r in runs) / 1e3
    nodes_ms = sum(per_op.values()) / 1e3 / a.steps
    print(f"decode step, batch {a.batch} at {a.context}+ positions, {a.threads} threads, {a.kv_cache} KV, "
          f"{a.steps} steps")
    print(f"  engine.decode, profiler off {plain_ms:7.3f} ms/step  ({a.batch / plain_ms * 1e3:.1f} tok/s)")
    print(f"  engine.decode, profiler on  {wall_ms:7.3f} ms/step")
    print(f"  graph run (model_run)       {run_ms:7.3f} ms/step  (outside the graph: {wall_ms - run_ms:.3f} ms)")
    print(f"  sum of node kernels         {nodes_ms:7.3f} ms/step  (between kernels: {run_ms - nodes_ms:.3f} ms)")
    print(f"    {'operator':<34} {'profiled':>8}  {'share':>5}  {'of an unprofiled step':>21}")
    for op, us in per_op.most_common():
        ms = us / 1e3 / a.steps
        print(f"    {op:<34} {ms:7.3f}ms  {100 * ms / wall_ms:4.1f}%  {plain_ms * ms / wall_ms:18.3f} ms")
    rest = wall_ms - nodes_ms
    print(f"    {'(outside kernels)':<34} {rest:7.3f}ms  {100 * rest / wall_ms:4.1f}%  "
          f"{plain_ms * rest / wall_ms:18.3f} ms")
    eng.close()


def steps(cpu, pkg, a):
    """(median ms of a.steps decode steps, the engine) after prefilling a.batch slots."""
    eng = cpu.CpuEngine(pkg, max_slots=a.slots or a.batch, context_length=2048, threads=a.threads,
                        kv_cache=a.kv_cache)
    rng = np.random.default_rng(0)
    slots = list(range(a.batch))
    for s in slots:
        eng.prefill(s, rng.integers(100, 20000, a.context).tolist())
    toks = [1] * a.batch
    for _ in range(8):                        # warm-up steps, not counted
        toks = [int(t) for t in np.argmax(eng.decode(slots, toks), axis=-1)]
    walls = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        toks = [int(t) for t in np.argmax(eng.decode(slots, toks), axis=-1)]
        walls.append(time.perf_counter() - t0)
    if not eng._sess.get_session_options().enable_profiling:
        eng.close()
    return statistics.median(walls) * 1e3, eng


if __name__ == "__main__":
    sys.exit(main())
