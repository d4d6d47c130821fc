#!/usr/bin/env python3
"""What the Responses API's stream costs per token against chat completions' for the same prompt.

    python bench/responses_overhead.py [--rounds 20] [--max-tokens 128] [--streams 1]

`npuflow serve` of the default model; the same conversation (instructions = the system turn)
sent as a streamed /v1/chat/completions and as a streamed /v1/responses (store off, temperature 0,
ignore_eos, --max-tokens), one after the other in alternating rounds with --streams requests at
once, read by one aiohttp client. Per request: time to first token and the time per token after
it ((last delta - first delta) / (deltas - 1)); the ratios are responses / chat of the medians,
and the median (with quartiles) of each round's own ratio: a round's two runs are seconds apart,
so a machine that drifts over minutes moves both alike and the paired ratio stays put.
Per round, also the gateway's CPU time per token delta (all its threads, from /proc schedstat)
and this client's (it shares the cores, and a Responses stream has three lines per event where
chat has two): the wall-clock ratio moves by a few percent from run to run with the machine,
these do not.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from stack import MODEL, cpu_seconds, stack_process, start_stack, stop_stack  # noqa: E402

SYSTEM = "You are a helpful assistant who writes long, careful answers."
USER = "Explain how a bicycle stays upright while it moves, step by step."


def bodies(max_tokens: int) -> dict[str, tuple[str, dict]]:
    return {
        "chat": ("/chat/completions", {"model": MODEL, "stream": True, "temperature": 0, "ignore_eos": True,
                                       "max_tokens": max_tokens, "messages": [
                                           {"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]}),
        "responses": ("/responses", {"model": MODEL, "stream": True, "temperature": 0, "ignore_eos": True,
                                     "max_output_tokens": max_tokens, "store": False, "instructions": SYSTEM,
                                     "input": USER}),
    }


def is_token(kind: str, data: dict) -> bool:
    if kind == "chat":
        return bool(data.get("choices")) and bool(data["choices"][0]["delta"].get("content"))
    return data.get("type") == "response.output_text.delta"


async def one(session, base: str, kind: str, path: str, body: dict) -> tuple[float, float, int]:
    """(TTFT s, s per token after the first, token deltas) of one streamed request."""
    t0 = time.perf_counter()
    stamps = []
    async with session.post(base + path, json=body) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            if is_token(kind, json.loads(line[6:])):
                stamps.append(time.perf_counter())
    return stamps[0] - t0, (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1), len(stamps)


async def run(base: str, rounds: int, max_tokens: int, streams: int, gateway: int
              ) -> tuple[dict[str, list[tuple[float, float, int]]], dict[str, list[float]], dict[str, list[float]]]:
    """(each kind's (TTFT, s per token, deltas) per request, and per round its gateway's and this
    client's CPU s per delta)."""
    import aiohttp
    got: dict[str, list] = {"chat": [], "responses": []}
    cpu: dict[str, list] = {"chat": [], "responses": []}
    client: dict[str, list] = {"chat": [], "responses": []}
    reqs = bodies(max_tokens)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        for kind, (path, body) in reqs.items():        # warm both paths
            await one(session, base, kind, path, body)
        for r in range(rounds):
            order = list(reqs) if r % 2 == 0 else list(reversed(reqs))
            for kind in order:
                path, body = reqs[kind]
                c0, p0 = cpu_seconds(gateway), time.process_time()
                done = await asyncio.gather(*(one(session, base, kind, path, body) for _ in range(streams)))
                deltas = max(1, sum(x[2] for x in done))
                cpu[kind].append((cpu_seconds(gateway) - c0) / deltas)
                client[kind].append((time.process_time() - p0) / deltas)
                got[kind] += done
    return got, cpu, client


def paired_ratios(got: dict[str, list[tuple[float, float, int]]], streams: int) -> list[float]:
    """Per round, the responses / chat ratio of that round's median time per token."""
    def per_round(kind: str) -> list[float]:
        v = got[kind]
        return [statistics.median(x[1] for x in v[i:i + streams]) for i in range(0, len(v), streams)]
    return [r / c for r, c in zip(per_round("responses"), per_round("chat"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--streams", type=int, default=1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_stack(pathlib.Path(tmp), max_batch=8, max_queue=64, request_timeout=600)
        try:
            got, cpu, client = asyncio.run(run(base, a.rounds, a.max_tokens, a.streams,
                                       stack_process(proc.pid, "npuflow-gateway")))
        finally:
            stop_stack(proc)
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in got.items()}
    print(f"{a.rounds} rounds x {a.streams} stream(s), {a.max_tokens} tokens, deltas per request: "
          f"chat {statistics.median(x[2] for x in got['chat'])}, "
          f"responses {statistics.median(x[2] for x in got['responses'])}")
    print(f"{'':10}{'TTFT ms':>10}{'ms/token':>10}")
    for k, (ttft, per) in med.items():
        print(f"{k:10}{ttft * 1000:10.1f}{per * 1000:10.3f}")
    print(f"responses / chat: TTFT {med['responses'][0] / med['chat'][0]:.3f}x, "
          f"per token {med['responses'][1] / med['chat'][1]:.3f}x")
    paired = sorted(paired_ratios(got, a.streams))
    q1, q2, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    print(f"per token, each round's own ratio: median {q2:.3f}x (quartiles {q1:.3f}x - {q3:.3f}x, "
          f"{len(paired)} rounds)")
    for who, per in (("gateway", cpu), ("client", client)):
        m = {k: statistics.median(v) for k, v in per.items()}
        print(f"{who} CPU per token delta: chat {m['chat'] * 1e3:.3f} ms, responses {m['responses'] * 1e3:.3f} ms "
              f"({m['responses'] / m['chat']:.3f}x)")


if __name__ == "__main__":
    main()
