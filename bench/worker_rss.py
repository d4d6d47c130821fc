#!/usr/bin/env python3
"""Does the worker's memory go flat under a varied load? Prints its VmRSS after each pass.

    python bench/worker_rss.py [--passes 3] [--requests 150] [--concurrency 4]
    python bench/worker_rss.py --base-url http://127.0.0.1:8000/v1 --worker-pid PID

Without --base-url it starts `npuflow serve` itself on a free loopback port with its own run
directory (gRPC off) and stops it at the end. Each pass sends the same kind of mix (not the same
requests: every schema and tool is new) that reaches the worker: many distinct json_schema
response formats, tools with forced calls, logprobs with top_logprobs 20, n up to 16, prompts
near the context, stop strings, logit_bias, penalties, seeds, and streams cancelled after a few
chunks. Loopback only, bounded by --passes x --requests.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import tempfile
import time
import urllib.parse
import urllib.request

import aiohttp

from stack import MODEL, stack_process, start_stack, stop_stack  # noqa: E402  (bench/ is the script's folder)


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


WORDS = ("alpha beta gamma delta river stone cloud paper window garden silver orange "
         "quiet rapid history number letter planet music forest").split()


def schema(rng: random.Random) -> dict:
    """A json_schema nobody sent before: fresh property names, types and shapes."""
    props, req = {}, []
    for k in range(rng.randint(1, 6)):
        name = f"{rng.choice(WORDS)}_{rng.randrange(10**6)}"
        kind = rng.choice(["integer", "string", "boolean", "number", "enum", "array", "object"])
        if kind == "enum":
            props[name] = {"enum": [f"v{rng.randrange(10**5)}" for _ in range(rng.randint(2, 5))]}
        elif kind == "array":
            props[name] = {"type": "array", "items": {"type": rng.choice(["integer", "string"])},
                           "maxItems": rng.randint(1, 4)}
        elif kind == "object":
            props[name] = {"type": "object", "properties": {f"n{rng.randrange(10**6)}": {"type": "integer"}},
                           "additionalProperties": False}
        elif kind == "string":
            props[name] = {"type": "string", "maxLength": rng.randint(1, 20)}
        else:
            props[name] = {"type": kind}
        if rng.random() < 0.7:
            req.append(name)
    return {"type": "object", "properties": props, "required": req, "additionalProperties": False}


def request_mix(rng: random.Random, long_prompt: str) -> tuple[str, dict, str]:
    """(path, body, kind) of one request of the mix."""
    msg = [{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))}]
    base = {"model": MODEL, "max_tokens": rng.randint(4, 16), "temperature": rng.choice([0, 0.7, 1.2])}
    kind = rng.choice(["schema", "schema", "tools", "logprobs", "n", "long", "stop", "misc", "cancel",
                       "completion"])
    if kind == "schema":
        body = {**base, "messages": msg, "max_tokens": 24, "n": rng.choice([1, 1, 2, 4]),
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": f"s{rng.randrange(10**6)}", "schema": schema(rng)}}}
    elif kind == "tools":
        tools = [{"type": "function", "function": {"name": f"fn_{rng.randrange(10**6)}", "description": "a tool",
                                                   "parameters": schema(rng)}} for _ in range(rng.randint(1, 3))]
        choice = rng.choice(["required", {"type": "function", "function": {"name": tools[0]["function"]["name"]}}])
        body = {**base, "messages": msg, "max_tokens": 32, "tools": tools, "tool_choice": choice}
    elif kind == "logprobs":
        body = {**base, "messages": msg, "logprobs": True, "top_logprobs": 20, "n": rng.choice([1, 2, 4])}
    elif kind == "n":
        body = {**base, "messages": msg, "n": rng.choice([4, 8, 16]), "max_tokens": 6, "temperature": 0.9,
                "seed": rng.randrange(10**9)}
    elif kind == "long":
        body = {**base, "messages": [{"role": "user", "content": long_prompt}], "max_tokens": 4}
    elif kind == "stop":
        body = {**base, "messages": msg, "stop": [rng.choice(WORDS), ".", "\n", "e"][:rng.randint(1, 4)],
                "stream": rng.random() < 0.5}
    elif kind == "misc":
        body = {**base, "messages": msg, "presence_penalty": rng.uniform(-2, 2),
                "frequency_penalty": rng.uniform(-2, 2), "logit_bias": {str(rng.randrange(49152)): -100},
                "top_k": rng.choice([0, 5, 40]), "top_p": rng.choice([0.5, 1.0]), "min_p": 0.05,
                "extra": "ignored"}
    elif kind == "cancel":
        body = {**base, "messages": msg, "max_tokens": 64, "stream": True, "logprobs": True, "top_logprobs": 5}
    else:
        body = {"model": MODEL, "prompt": " ".join(rng.choice(WORDS) for _ in range(20)), "max_tokens": 8,
                "logprobs": 5, "echo": rng.random() < 0.5, "n": rng.choice([1, 3])}
        return "/completions", body, kind
    return "/chat/completions", body, kind


async def one(session: aiohttp.ClientSession, base: str, path: str, body: dict, kind: str) -> int:
    async with session.post(base + path, json=body) as r:
        if kind == "cancel" and r.status == 200:
            n = 0
            async for _ in r.content:      # a few lines, then hang up
                n += 1
                if n >= 4:
                    break
            r.close()
            return r.status
        await r.read()
        return r.status


async def run_pass(base: str, rng: random.Random, requests: int, concurrency: int, long_prompt: str) -> dict:
    statuses: dict[int, int] = {}
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def go(path, body, kind):
            async with sem:
                try:
                    st = await one(session, base, path, body, kind)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    st = -1
                statuses[st] = statuses.get(st, 0) + 1

        await asyncio.gather(*(go(*request_mix(rng, long_prompt)) for _ in range(requests)))
    return statuses


def long_prompt_text(base: str, context: int) -> str:
    """Text whose chat rendering is a little under the context (checked with /tokenize)."""
    u = urllib.parse.urlsplit(base)
    words = 1500
    for _ in range(6):
        text = " ".join(WORDS[i % len(WORDS)] for i in range(words))
        req = urllib.request.Request(f"{u.scheme}://{u.netloc}/tokenize", data=json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": text}]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            count = json.loads(r.read())["count"]
        target = context - 24
        if target - 40 <= count <= target:
            break
        words = max(10, int(words * target / count) - 2)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", help="a running stack's /v1 URL (loopback); default: start one")
    ap.add_argument("--worker-pid", type=int, help="with --base-url: the worker's pid")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--requests", type=int, default=150, help="requests per pass")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--max-batch", type=int, default=4, help="of the stack this script starts")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    proc = None
    if a.base_url:
        host = urllib.parse.urlsplit(a.base_url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("loopback only")
        if not a.worker_pid:
            raise SystemExit("--worker-pid is needed with --base-url")
        base, pid = a.base_url.rstrip("/"), a.worker_pid
    else:
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="npuflow-rss-"))
        proc, base = start_stack(tmp, max_batch=a.max_batch, max_queue=64, request_timeout=120)
        pid = stack_process(proc.pid, f"npuflow-worker {MODEL}")
    try:
        rng = random.Random(a.seed)
        long_prompt = long_prompt_text(base, a.context)
        print(f"worker pid {pid}: VmRSS at start {rss_mib(pid):.0f} MiB", flush=True)
        for k in range(a.passes):
            t0 = time.monotonic()
            statuses = asyncio.run(run_pass(base, rng, a.requests, a.concurrency, long_prompt))
            time.sleep(1.0)   # let the last aborts land
            print(f"pass {k + 1}: {a.requests} requests in {time.monotonic() - t0:.0f} s, statuses "
                  f"{dict(sorted(statuses.items()))}, worker VmRSS {rss_mib(pid):.0f} MiB", flush=True)
    finally:
        if proc is not None:
            stop_stack(proc)


if __name__ == "__main__":
    main()
