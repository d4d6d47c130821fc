#!/usr/bin/env python3
"""What the serving path costs: the stack driven over HTTP against the engine driven directly.

    python bench/serve.py [--streams 1 4] [--rounds 8] [--max-tokens 128] [--threads 2]

Directly: the worker's scheduler and the model's CPU engine in this process, with no sockets:
c requests (the prompt's token ids, temperature 0, --max-tokens with ignore_eos) are submitted
at once and steps run until all finish. Through the stack: `npuflow serve` with the same model,
threads and batch size gets the same work as streamed /v1/completions requests (the prompt as
text), c at a time, from this process. Rounds of the two alternate (never overlap), so drifts in
the machine's speed fall on both alike. Both measure time to first token, the time between
tokens and aggregate tokens/s (all generated tokens over the wall time of a round); the
difference is what the gateway, the tokenizer, the sockets and the client's share of the two
cores add.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import signal
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from stack import serve  # noqa: E402

PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
          "combined movable metal type, oil-based ink and a wooden press adapted from those used for wine. "
          "His workshop in Mainz produced a Bible whose pages still look clean and even today. Within fifty "
          "years, printing shops had opened in more than two hundred cities across Europe, and the number of "
          "books grew from thousands to millions. Write a short essay about its consequences.")
MODEL = "smollm2-135m-instruct"


def pct(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


# ---------------------------------------------------------------- the engine directly
class Direct:
    """The worker's own scheduler and engine in this process, no sockets: c requests submitted at
    once, steps run until all finish; a token's time is when the step that made it returned."""

    def __init__(self, pkg, prompt_ids, max_batch, max_tokens, threads):
        from npuflow.config import ModelSettings
        from npuflow.engine.cpu import CpuEngine
        from npuflow.llm_worker import build_link
        from npuflow.v1 import common_pb2, worker_pb2
        self.pb = worker_pb2
        self.engine = CpuEngine(pkg, max_slots=max_batch, context_length=2048, threads=threads)
        self.sched = build_link(self.engine, pkg, ModelSettings(
            id=MODEL, max_batch=max_batch, threads=threads, endpoint="ipc:///nonexistent")).scheduler
        self.prompt_ids = prompt_ids
        self.sampling = common_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        self.n = 0

    def round(self, c):
        times: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        for _ in range(c):
            self.n += 1
            rid = f"r{self.n}"
            times[rid] = []
            self.sched.submit(self.pb.GenerateRequest(request_id=rid, model=MODEL, prompt_token_ids=self.prompt_ids,
                                                      sampling=self.sampling), b"bench")
        done = 0
        while done < c:
            events = self.sched.step()
            now = time.perf_counter()
            for _, ev in events:
                if ev.token_ids:
                    times[ev.request_id].append(now)
                done += bool(ev.finish_reason)
        return t0, list(times.values()), time.perf_counter() - t0


# ---------------------------------------------------------------- the running stack
async def one_stream(session, url, max_tokens):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True}
    times = []
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:  # no JSON parsing: the client shares the two cores
            if line.startswith(b"data: {") and b'"text": ""' not in line and b'"text": "' in line:
                times.append(time.perf_counter())
    return times


async def stack_round(session, url, c, max_tokens):
    t0 = time.perf_counter()
    results = await asyncio.gather(*[one_stream(session, url, max_tokens) for _ in range(c)])
    return t0, results, time.perf_counter() - t0


class Figures:
    def __init__(self):
        self.ttft, self.itl, self.rates = [], [], []

    def add(self, t0, streams, wall):
        for ts in streams:
            self.ttft.append(ts[0] - t0)
            self.itl += list(np.diff(ts))
        self.rates.append(sum(len(ts) for ts in streams) / wall)

    def summary(self):
        return {"ttft_p50_ms": pct(self.ttft, 50) * 1e3, "itl_ms": statistics.mean(self.itl) * 1e3,
                "itl_p50_ms": pct(self.itl, 50) * 1e3, "itl_p99_ms": pct(self.itl, 99) * 1e3,
                "tok_s": statistics.median(self.rates)}


async def measure(direct, base_url, streams, rounds, max_tokens):
    """Alternate a round on the engine directly and a round through the stack, so that drifts in
    the machine's speed fall on both alike; one warm-up round of each first."""
    import aiohttp
    out = {}
    async with aiohttp.ClientSession() as session:
        url = base_url + "/completions"
        for c in streams:
            d, s = Figures(), Figures()
            for r in range(-1, rounds):
                rd = direct.round(c)
                rs = await stack_round(session, url, c, max_tokens)
                if r >= 0:
                    d.add(*rd)
                    s.add(*rs)
            out[c] = (d.summary(), s.summary())
    return out


def start_stack(tmp, threads, max_batch):
    models = f'[[models]]\nid = "{MODEL}"\nthreads = {threads}\nmax_batch = {max_batch}\ncontext_length = 2048\n'
    return serve(pathlib.Path(tmp), models, request_timeout=600)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=8, help="measured rounds of each kind per concurrency level")
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
          f"{a.rounds} alternating rounds per level")

    direct = Direct(pkg, prompt_ids, max(a.streams), a.max_tokens, a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_stack(tmp, a.threads, max(a.streams))
        try:
            figures = asyncio.run(measure(direct, base, a.streams, a.rounds, a.max_tokens))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            direct.engine.close()

    print(f"{'streams':>7} | {'TTFT p50 engine':>15} {'stack':>8} {'added':>8} | "
          f"{'ms/token engine':>15} {'stack':>8} {'added':>7} | {'tok/s engine':>12} {'stack':>7} {'ratio':>6}")
    for c in a.streams:
        d, s = figures[c]
        print(f"{c:>7} | {d['ttft_p50_ms']:>13.2f}ms {s['ttft_p50_ms']:>6.2f}ms "
              f"{s['ttft_p50_ms'] - d['ttft_p50_ms']:>+6.2f}ms | {d['itl_ms']:>13.2f}ms {s['itl_ms']:>6.2f}ms "
              f"{(s['itl_ms'] / d['itl_ms'] - 1) * 100:>+6.1f}% | {d['tok_s']:>12.1f} {s['tok_s']:>7.1f} "
              f"{s['tok_s'] / d['tok_s']:>6.3f}")
    print("inter-token p50/p99 ms, engine | stack: " + ", ".join(
        f"{c} streams {figures[c][0]['itl_p50_ms']:.2f}/{figures[c][0]['itl_p99_ms']:.2f} | "
        f"{figures[c][1]['itl_p50_ms']:.2f}/{figures[c][1]['itl_p99_ms']:.2f}" for c in a.streams))


if __name__ == "__main__":
    main()
