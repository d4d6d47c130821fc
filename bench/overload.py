#!/usr/bin/env python3
"""Overload and stalled readers: is every answer a clean 429 or a complete stream, and does a
client that stops reading let go of its slot?

    python bench/overload.py [--streams 80] [--stalled 6] [--max-batch 2] [--max-queue 4]
    python bench/overload.py --base-url http://127.0.0.1:8000/v1 --model ID

Without --base-url it starts `npuflow serve` itself on a free loopback port with its own run
directory (gRPC off), max_batch/max_queue as given and NPUFLOW_STREAM_WRITE_TIMEOUT_S from
--write-timeout, and stops it at the end. Then:
  1. --streams concurrent streamed requests (short answers) are sent at once;
  2. --stalled clients send a streamed request (long answer with top_logprobs 20) on raw sockets
     with a 4 KiB receive buffer and never read, and --streams more are sent at once;
  3. a fresh client asks (following Retry-After on a 429) until it is served, while the stalled
     clients still hold their connections open.
Prints the counts of complete 200 streams, 429s with and without Retry-After, streams that got
an error event after their 200, anything else, and how long the fresh client waited. Loopback
only, bounded by the numbers above.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import socket
import tempfile
import time
import urllib.parse
import urllib.request

import aiohttp

from stack import MODEL, start_stack, stop_stack  # noqa: E402  (bench/ is the script's folder)


def stalled_reader(base: str, model: str, max_tokens: int) -> socket.socket:
    u = urllib.parse.urlsplit(base)
    body = json.dumps({"model": model, "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
                       "logprobs": True, "top_logprobs": 20, "temperature": 0.8,
                       "messages": [{"role": "user", "content": "Tell me a very long story."}]}).encode()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((u.hostname, u.port))
    s.sendall(f"POST {u.path}/chat/completions HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


async def stream(session: aiohttp.ClientSession, base: str, model: str, max_tokens: int) -> str:
    body = {"model": model, "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Name three colors."}]}
    try:
        async with session.post(base + "/chat/completions", json=body) as r:
            if r.status == 429:
                ra = r.headers.get("Retry-After", "")
                await r.read()
                return "429 with Retry-After" if ra.isdigit() and int(ra) >= 1 else "429 without Retry-After"
            if r.status != 200:
                await r.read()
                return f"status {r.status}"
            lines = [line.strip() async for line in r.content if line.startswith(b"data:")]
            if any(b'"error"' in x for x in lines):
                return "error after 200"
            return "200 complete" if lines and lines[-1] == b"data: [DONE]" else "200 incomplete"
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return f"client error {type(e).__name__}"


async def fresh_client(base: str, model: str, limit_s: float) -> tuple[float | None, int, list[str]]:
    """Seconds until a fresh client got a complete answer (following Retry-After), the 429s it
    got on the way and their Retry-After values."""
    t0, refusals, waits = time.monotonic(), 0, []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit_s)) as session:
        while time.monotonic() - t0 < limit_s:
            body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
            async with session.post(base + "/chat/completions", json=body) as r:
                await r.read()
                if r.status == 200:
                    return time.monotonic() - t0, refusals, waits
                refusals += 1
                ra = r.headers.get("Retry-After", "")
                waits.append(ra or "none")
                await asyncio.sleep(min(float(ra) if ra.isdigit() else 1.0, 10.0))
    return None, refusals, waits


def health(base: str) -> dict:
    u = urllib.parse.urlsplit(base)
    try:
        with urllib.request.urlopen(f"{u.scheme}://{u.netloc}/health", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"{}")


async def burst(base: str, model: str, n: int, max_tokens: int) -> dict[str, int]:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as session:
        results = await asyncio.gather(*(stream(session, base, model, max_tokens) for _ in range(n)))
    counts: dict[str, int] = {}
    for r in results:
        counts[r] = counts.get(r, 0) + 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", help="a running stack's /v1 URL (loopback); default: start one")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--streams", type=int, default=80)
    ap.add_argument("--stalled", type=int, default=6, help="clients that never read (default max_batch + max_queue)")
    ap.add_argument("--max-batch", type=int, default=2)
    ap.add_argument("--max-queue", type=int, default=4)
    ap.add_argument("--write-timeout", type=float, default=5.0, help="server.stream_write_timeout_s of the stack started")
    ap.add_argument("--request-timeout", type=float, default=60.0, help="server.request_timeout_s of the stack started")
    ap.add_argument("--tokens", type=int, default=16, help="max_tokens of the burst's streams")
    ap.add_argument("--fresh-limit", type=float, default=90.0, help="seconds the fresh client keeps trying")
    a = ap.parse_args()
    proc = None
    if a.base_url:
        if urllib.parse.urlsplit(a.base_url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("loopback only")
        base = a.base_url.rstrip("/")
    else:
        proc, base = start_stack(pathlib.Path(tempfile.mkdtemp(prefix="npuflow-overload-")), max_batch=a.max_batch,
                                  max_queue=a.max_queue, request_timeout=a.request_timeout,
                                  env={"NPUFLOW_STREAM_WRITE_TIMEOUT_S": str(a.write_timeout)})
    stalled: list[socket.socket] = []
    try:
        t0 = time.monotonic()
        counts = asyncio.run(burst(base, a.model, a.streams, a.tokens))
        print(f"{a.streams} concurrent streams in {time.monotonic() - t0:.1f} s: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), flush=True)
        stalled = [stalled_reader(base, a.model, 1500) for _ in range(a.stalled)]
        time.sleep(2.0)
        print(f"{a.stalled} stalled readers open; /health workers: {health(base).get('workers')}", flush=True)
        t0 = time.monotonic()
        counts = asyncio.run(burst(base, a.model, a.streams, a.tokens))
        print(f"{a.streams} more concurrent streams while they stall, in {time.monotonic() - t0:.1f} s: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), flush=True)
        waited, refusals, waits = asyncio.run(fresh_client(base, a.model, a.fresh_limit))
        held = sum(1 for s in stalled if s.fileno() >= 0)
        if waited is None:
            print(f"fresh client NOT served within {a.fresh_limit:.0f} s ({refusals} refusals) while {held} stalled "
                  f"readers held their connections", flush=True)
        else:
            seen = {w: waits.count(w) for w in dict.fromkeys(waits)}
            print(f"fresh client served after {waited:.1f} s ({refusals} refusals first, Retry-After values "
                  f"{seen}) while {held} stalled readers held their connections", flush=True)
        print(f"/health workers after: {health(base).get('workers')}", flush=True)
    finally:
        for s in stalled:
            s.close()
        if proc is not None:
            stop_stack(proc)


if __name__ == "__main__":
    main()
