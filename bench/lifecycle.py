"""Cold starts and loads under `npuflow serve`: what loading a model on demand costs, and what a
load costs the models that keep serving meanwhile.

    python bench/lifecycle.py [--engine cpu|ax|both] [--cycles 20] [--runs 3]

For the default model on the CPU engine and for its AX-layout export on the AX engine's PC
stand-in (simulate_timing = "ax630c"):
- in-process load: resolve the package, build the engine (and the worker's scheduler side is
  left out: it is a few ms), one prefill of the benchmark prompt; in this interpreter, median;
- cold time to first token through the stack: the model unloaded (POST /models/unload), then a
  streamed chat; split from /v1/models' `last_load` into the worker's process start, its model
  load and the rest (gateway, Hello, first prefill); "added" = cold TTFT - warm TTFT, and its
  ratio to the in-process load (target <= 1.5);
- per-token time of a loaded model streaming a long answer while another model is loaded and
  unloaded again and again (only the token gaps that end while a load runs), against the same
  stream with nothing loading, taking turns (target within 10%);
- memory over --cycles load/unload cycles: the stack's RSS (supervisor, gateway, tokenizer; the
  workers are processes of their own that exit) and MemAvailable, before and after.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

import psutil

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from stack import serve, stop_stack  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
PROMPT_IDS = list(range(100, 140))   # about as many tokens as PROMPT in the chat template


def in_process_load(model_toml: dict, cache: str) -> tuple[float, float]:
    """Seconds, in this interpreter, to (a) resolve the package, build the engine and prefill
    PROMPT_IDS once, and (b) that plus what else the worker builds before its Hello (the token
    table for detokenizing, llguidance's vocabulary, the vision encoder)."""
    from npuflow.config import ModelSettings, load_settings
    from npuflow.llm_worker import run as worker_run
    from npuflow.llm_worker.detok import load_token_table
    from npuflow.llm_worker.run import build_engine, build_vision, load_package
    # llguidance's vocabulary as the worker in this tree makes it before its Hello: built at once
    # (_grammar_vocab), or only wrapped, to be built once the worker is idle (grammar_vocab)
    grammar_vocab = getattr(worker_run, "grammar_vocab", None) or worker_run._grammar_vocab
    settings = load_settings(env={"NPUFLOW_CACHE_DIR": cache})
    m = ModelSettings(**{k: v for k, v in model_toml.items() if k != "preload"})
    t = time.perf_counter()
    package = load_package(settings, m)
    engine = build_engine(package, m)
    engine.prefill(0, PROMPT_IDS)
    engine_s = time.perf_counter() - t
    load_token_table(package.tokenizer_path, engine.vocab_size)
    grammar_vocab(package, engine.vocab_size)
    vision = build_vision(package, m)
    worker_s = time.perf_counter() - t
    if vision is not None:
        vision.close()
    engine.close()
    return engine_s, worker_s


def _toml(models: list[dict]) -> str:
    out = ""
    for m in models:
        out += "[[models]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in m.items())
    return out


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base.removesuffix("/v1") + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def _model(base: str, model: str) -> dict:
    with urllib.request.urlopen(f"{base}/models/{model}", timeout=30) as r:
        return json.loads(r.read())


def token_stamps(base: str, model: str, max_tokens: int) -> tuple[float, list[float]]:
    """(when the request was sent, when each content token arrived) of a streamed greedy chat,
    in time.perf_counter() seconds."""
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    req = urllib.request.Request(f"{base}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    stamps = []
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if any(c.get("delta", {}).get("content") for c in chunk.get("choices", ())):
                stamps.append(time.perf_counter())
    return t0, stamps


def stream(base: str, model: str, max_tokens: int) -> tuple[float, list[float]]:
    """(seconds to the first token, the gaps between tokens) of a streamed greedy chat."""
    t0, stamps = token_stamps(base, model, max_tokens)
    return stamps[0] - t0, [b - a for a, b in zip(stamps, stamps[1:])]


def stack_rss(proc) -> int:
    root = psutil.Process(proc.pid)
    procs = [root] + [p for p in root.children(recursive=True) if "npuflow-worker" not in " ".join(p.cmdline())]
    return sum(p.memory_info().rss for p in procs)


def cold_start(base: str, model: str, runs: int, in_proc: tuple[float, float]) -> dict:
    _post(base, "/models/load", {"model": model})
    stream(base, model, 1)
    warm = statistics.median(stream(base, model, 1)[0] for _ in range(runs))
    colds, splits = [], []
    for _ in range(runs):
        _post(base, "/models/unload", {"model": model})
        ttft, _ = stream(base, model, 1)
        colds.append(ttft)
        splits.append(_model(base, model).get("last_load") or {})
    cold = statistics.median(colds)
    med = {k: statistics.median(s.get(k, 0.0) for s in splits) for k in ("seconds", "process_start_seconds",
                                                                          "model_load_seconds")}
    return {"in_process_engine_s": in_proc[0], "in_process_worker_s": in_proc[1], "warm_ttft_s": warm,
            "cold_ttft_s": cold, "process_start_s": med["process_start_seconds"],
            "model_load_s": med["model_load_seconds"], "load_total_s": med["seconds"], "added_s": cold - warm,
            "added_over_engine": (cold - warm) / in_proc[0], "added_over_worker": (cold - warm) / in_proc[1]}


def per_token_during_loads(base: str, serving: str, loading: str, max_tokens: int, runs: int) -> dict:
    """Per-token time of `serving` streaming while `loading` is loaded and unloaded over and over,
    against the same stream with nothing loading; `runs` of each, taking turns (so a change of
    the machine's load hits both alike). Only the gaps between tokens that end while a load runs
    (from its POST /models/load to the answer) count as "during loads": a stream that overlaps
    loads for part of its length is not diluted by the rest of it."""
    stream(base, serving, 8)
    idle, during, whole, windows = [], [], [], []
    for _ in range(runs):
        idle += stream(base, serving, max_tokens)[1]
        stop = threading.Event()

        def churn():
            while not stop.is_set():
                t = time.perf_counter()
                _post(base, "/models/load", {"model": loading})
                windows.append((t, time.perf_counter()))
                _post(base, "/models/unload", {"model": loading})

        th = threading.Thread(target=churn)
        th.start()
        time.sleep(0.1)
        _, stamps = token_stamps(base, serving, max_tokens)
        stop.set()
        th.join()
        for a, b in zip(stamps, stamps[1:]):
            whole.append(b - a)
            if any(s <= b <= e for s, e in windows):
                during.append(b - a)
    idle_ms = statistics.mean(idle) * 1000
    during_ms = statistics.mean(during or whole) * 1000
    return {"idle_ms_per_token": idle_ms, "during_loads_ms_per_token": during_ms, "ratio": during_ms / idle_ms,
            "whole_stream_ms_per_token": statistics.mean(whole) * 1000, "gaps_during_loads": len(during),
            "gaps_idle": len(idle), "loads": len(windows),
            "load_s_median": statistics.median(e - s for s, e in windows) if windows else 0.0}


def memory_cycles(proc, base: str, model: str, cycles: int) -> dict:
    _post(base, "/models/load", {"model": model})
    _post(base, "/models/unload", {"model": model})
    rss0, avail0 = stack_rss(proc), psutil.virtual_memory().available
    rss = []
    for _ in range(cycles):
        _post(base, "/models/load", {"model": model})
        stream(base, model, 4)
        _post(base, "/models/unload", {"model": model})
        rss.append(stack_rss(proc))
    return {"cycles": cycles, "stack_rss_before_mib": rss0 / 2 ** 20, "stack_rss_after_mib": rss[-1] / 2 ** 20,
            "stack_rss_max_mib": max(rss) / 2 ** 20,
            "mem_available_drift_mib": (psutil.virtual_memory().available - avail0) / 2 ** 20}


def engine_models(engine: str, cache: pathlib.Path) -> list[dict]:
    common = {"context_length": 512, "max_batch": 1, "threads": 2}
    if engine == "cpu":
        src = "default"
        extra: dict = {}
    else:
        from default_ax import export_default
        src = str(export_default(cache, 128, 512))
        extra = {"engine": "ax", "simulate_timing": "ax630c"}
    return [{"id": f"{engine}-{n}", "source": src, **common, **extra, "preload": n == "serving"}
            for n in ("serving", "cold", "churn")]


def run(engine: str, args, cache: pathlib.Path) -> dict:
    models = engine_models(engine, cache)
    loads = [in_process_load(models[1], str(cache)) for _ in range(args.runs)]
    in_proc = (statistics.median(x[0] for x in loads), statistics.median(x[1] for x in loads))
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = serve(pathlib.Path(tmp), _toml(models), request_timeout=600)
        try:
            out = {"cold": cold_start(base, models[1]["id"], args.runs, in_proc)}
            out["per_token"] = per_token_during_loads(base, models[0]["id"], models[2]["id"],
                                                      args.tokens if engine == "cpu" else 24, args.runs)
            out["memory"] = memory_cycles(proc, base, models[2]["id"], args.cycles if engine == "cpu" else 3)
        finally:
            stop_stack(proc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("cpu", "ax", "both"), default="both")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    print("command: python bench/lifecycle.py " + " ".join(sys.argv[1:]), flush=True)
    from npuflow.config import load_settings
    cache = pathlib.Path(load_settings().server.cache_dir)
    results = {}
    for engine in (("cpu", "ax") if args.engine == "both" else (args.engine,)):
        results[engine] = r = run(engine, args, cache)
        c, p, m = r["cold"], r["per_token"], r["memory"]
        print(f"\n[{engine}] in-process load: engine + first prefill {c['in_process_engine_s']:.2f} s, everything the "
              f"worker builds {c['in_process_worker_s']:.2f} s | warm TTFT {c['warm_ttft_s']:.3f} s | "
              f"cold TTFT {c['cold_ttft_s']:.2f} s (load {c['load_total_s']:.2f} s: process start "
              f"{c['process_start_s']:.2f} s + model load {c['model_load_s']:.2f} s)")
        print(f"[{engine}] cold start adds {c['added_s']:.2f} s = {c['added_over_worker']:.2f}x the worker's build "
              f"in-process ({c['added_over_engine']:.2f}x the engine's alone; target <= 1.5x)")
        print(f"[{engine}] per token of a loaded model: idle {p['idle_ms_per_token']:.1f} ms, while another loads "
              f"{p['during_loads_ms_per_token']:.1f} ms = {p['ratio']:.2f}x (target <= 1.10x; {p['gaps_during_loads']} "
              f"gaps within {p['loads']} loads of {p['load_s_median']:.2f} s; whole streams "
              f"{p['whole_stream_ms_per_token']:.1f} ms)")
        print(f"[{engine}] memory over {m['cycles']} load/unload cycles: stack RSS {m['stack_rss_before_mib']:.1f} -> "
              f"{m['stack_rss_after_mib']:.1f} MiB (max {m['stack_rss_max_mib']:.1f}), MemAvailable drift "
              f"{m['mem_available_drift_mib']:+.1f} MiB", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
