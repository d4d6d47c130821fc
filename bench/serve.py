#!/usr/bin/env python3
"""What the serving path costs: the stack driven over HTTP against the engine driven directly.

    python bench/serve.py [--streams 1 4] [--requests 8] [--max-tokens 128] [--threads 2]

Phase 1 loads the model's CPU engine in this process and runs the same work the stack will do:
for each request, prefill the prompt and sample greedily (time to first token), then decode
--max-tokens tokens, c requests at a time in one batch. Phase 2 starts `npuflow serve` with the
same model, threads and batch size, and sends streamed /v1/completions requests (the same prompt
text, temperature 0, ignore_eos) c at a time, measuring time to first token, the time between
tokens and aggregate tokens/s. The two phases run one after the other, never together. The
difference is what the gateway, tokenizer, sockets and scheduler add.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
          "combined movable metal type, oil-based ink and a wooden press adapted from those used for wine. "
          "His workshop in Mainz produced a Bible whose pages still look clean and even today. Within fifty "
          "years, printing shops had opened in more than two hundred cities across Europe, and the number of "
          "books grew from thousands to millions. Write a short essay about its consequences.")
MODEL = "smollm2-135m-instruct"


def pct(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


# ---------------------------------------------------------------- phase 1: the engine directly
def engine_phase(pkg, prompt_ids, streams, requests, max_tokens, threads):
    from npuflow.engine.cpu import CpuEngine
    eng = CpuEngine(pkg, max_slots=max(streams), context_length=2048, threads=threads)
    out = {}
    try:
        for c in streams:
            ttft, step = [], []
            for r in range(-1, requests // c):  # round -1 warms up
                slots = list(range(c))
                t_first = []
                toks = []
                t0 = time.perf_counter()
                for s in slots:  # the stack also prefills newcomers one by one
                    logits = eng.prefill(s, prompt_ids)
                    toks.append(int(np.argmax(logits)))
                    t_first.append(time.perf_counter() - t0)
                t1 = time.perf_counter()
                for _ in range(max_tokens - 1):
                    logits = eng.decode(slots, toks)
                    toks = [int(i) for i in np.argmax(logits, axis=-1)]
                per_step = (time.perf_counter() - t1) / (max_tokens - 1)
                for s in slots:
                    eng.release(s)
                if r >= 0:
                    ttft += t_first
                    step.append(per_step)
            out[c] = {"ttft_p50_ms": pct(ttft, 50) * 1e3, "itl_ms": statistics.mean(step) * 1e3,
                      "tok_s": c / statistics.mean(step)}
    finally:
        eng.close()
    return out


# ---------------------------------------------------------------- phase 2: the running stack
async def one_stream(session, url, max_tokens):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True}
    t0 = time.perf_counter()
    times = []
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text") is not None:
                times.append(time.perf_counter())
    return t0, times


async def stack_phase(base_url, streams, requests, max_tokens):
    import aiohttp
    out = {}
    async with aiohttp.ClientSession() as session:
        url = base_url + "/completions"
        for c in streams:
            ttft, itl, rates = [], [], []
            for r in range(-1, requests // c):
                t_start = time.perf_counter()
                results = await asyncio.gather(*[one_stream(session, url, max_tokens) for _ in range(c)])
                wall = time.perf_counter() - t_start
                if r < 0:
                    continue
                ntok = 0
                for t0, times in results:
                    ttft.append(times[0] - t0)
                    itl += list(np.diff(times))
                    ntok += len(times)
                rates.append(ntok / wall)
            out[c] = {"ttft_p50_ms": pct(ttft, 50) * 1e3, "itl_ms": statistics.mean(itl) * 1e3,
                      "itl_p50_ms": pct(itl, 50) * 1e3, "itl_p99_ms": pct(itl, 99) * 1e3,
                      "tok_s": statistics.mean(rates)}
    return out


def start_stack(tmp, threads, max_batch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = pathlib.Path(tmp) / "bench.toml"
    cfg.write_text(f'[server]\nport = {port}\nrun_dir = "{tmp}/run"\ngrpc_port = 0\nlog_level = "warning"\n\n'
                   f'[[models]]\nid = "{MODEL}"\nthreads = {threads}\nmax_batch = {max_batch}\n'
                   f'context_length = 2048\n')
    log = open(pathlib.Path(tmp) / "stack.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "npuflow.cli", "serve", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"stack exited: see {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.3)
    raise SystemExit("stack did not become healthy")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--requests", type=int, default=8, help="measured requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from tokenizers import Tokenizer
    from npuflow.config import load_settings
    from npuflow.models.resolve import resolve_model
    settings = load_settings(env={k: v for k, v in os.environ.items() if k == "NPUFLOW_CACHE_DIR"})
    pkg = resolve_model("default", settings.server.cache_dir, MODEL)
    prompt_ids = Tokenizer.from_file(str(pkg.tokenizer_path)).encode(PROMPT, add_special_tokens=False).ids
    print(f"model {MODEL}, prompt {len(prompt_ids)} tokens, {a.max_tokens} generated, threads {a.threads}, "
          f"{a.requests} requests per level")

    direct = engine_phase(pkg, prompt_ids, a.streams, a.requests, a.max_tokens, a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_stack(tmp, a.threads, max(a.streams))
        try:
            served = asyncio.run(stack_phase(base, a.streams, a.requests, a.max_tokens))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    print(f"{'streams':>7} | {'TTFT p50 engine':>15} {'stack':>8} {'added':>8} | "
          f"{'ms/token engine':>15} {'stack':>8} {'added':>7} | {'tok/s engine':>12} {'stack':>7} {'ratio':>6}")
    for c in a.streams:
        d, s = direct[c], served[c]
        print(f"{c:>7} | {d['ttft_p50_ms']:>13.2f}ms {s['ttft_p50_ms']:>6.2f}ms "
              f"{s['ttft_p50_ms'] - d['ttft_p50_ms']:>+6.2f}ms | {d['itl_ms']:>13.2f}ms {s['itl_ms']:>6.2f}ms "
              f"{(s['itl_ms'] / d['itl_ms'] - 1) * 100:>+6.1f}% | {d['tok_s']:>12.1f} {s['tok_s']:>7.1f} "
              f"{s['tok_s'] / d['tok_s']:>6.3f}")
    print("stack inter-token p50/p99 ms: " + ", ".join(
        f"{c} streams {served[c]['itl_p50_ms']:.2f}/{served[c]['itl_p99_ms']:.2f}" for c in a.streams))


if __name__ == "__main__":
    main()
