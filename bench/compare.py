#!/usr/bin/env python3
"""npuflow against llama.cpp's llama-server: the same GGUF, the same streaming client, one run.

    LLAMA_SERVER=/path/to/llama-server python bench/compare.py [--rounds 5] [--threads 2]
        [--slots 8] [--max-batch N] [--kv-cache int8] [--only single,load8,load16,long,rss]

Both servers are started here: llama-server on the default model's GGUF (the file npuflow
converts its package from) with --slots slots of 2,048 positions (-c slots*2048 -np slots) and
--threads threads; `npuflow serve` with its defaults (or --max-batch). Each scenario alternates
rounds between the two (never overlapping), so drifts in the machine's speed fall on both. Every
request is a streamed /v1/chat/completions with temperature 0, ignore_eos and max_tokens 128;
each has its own system message ("Session N.") so neither server can reuse another request's
prompt beyond its first tokens.

  single  one stream, a 100-token prompt: time to first token, decode tok/s (tokens after the
          first over the time from the first to the last)
  load8   8 streams at once: aggregate tok/s (all tokens over the round's wall time), p95 TTFT
  load16  16 streams at once: errors, aggregate tok/s
  long    one stream whose prompt fills ~1,440 positions: decode tok/s around 1,500 positions
  fill8   8 streams at once whose prompts fill ~1,900 positions: every slot's KV nearly full
  rss     each server's resident memory once started (after one short request each) and after
          the scenarios (npuflow: the model's worker); with fill8 run, the latter is the most
          that 8 slots of 2,048 positions hold

Prints each figure for both and the ratio npuflow / llama-server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from serve import PROMPT  # noqa: E402
from stack import MODEL, free_port, serve, stack_process, stop_stack, wait_healthy  # noqa: E402

ASK = "Write a short essay about its consequences."
TEXT = PROMPT.removesuffix(ASK)             # bench/serve.py's text, repeated to the length asked
CONTENT = re.compile(rb'"content": ?"(?!")')     # a chunk with text (both servers' JSON spacing)
USAGE = re.compile(rb'"usage": ?\{')
SCENARIOS = ("single", "load8", "load16", "long", "rss")     # the default --only; also "fill8"


class Prompts:
    """Chat messages whose templated prompt is about n tokens, each with a session number of its own."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.n = 0

    def messages(self, tokens: int) -> list[dict]:
        self.n += 1
        system = {"role": "system", "content": f"Session {self.n}."}
        words = (TEXT * (tokens // 80 + 2)).split(" ")
        lo, hi = 1, len(words)
        while lo < hi:          # the longest prefix of the text whose prompt stays within `tokens`
            mid = (lo + hi + 1) // 2
            if self._count(system, " ".join(words[:mid])) <= tokens:
                lo = mid
            else:
                hi = mid - 1
        return [system, {"role": "user", "content": " ".join(words[:lo]) + " " + ASK}]

    def _count(self, system, text):
        prompt = (f"<|im_start|>system\n{system['content']}<|im_end|>\n<|im_start|>user\n{text} {ASK}"
                  "<|im_end|>\n<|im_start|>assistant\n")
        return len(self.tok.encode(prompt, add_special_tokens=False).ids)


async def one_stream(session, url, messages, max_tokens):
    """(time to first token, token arrival times, completion tokens, error or None)."""
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    times, usage = [], None
    try:
        async with session.post(url + "/chat/completions", json=body) as resp:
            if resp.status != 200:
                return None, [], 0, f"HTTP {resp.status}: {(await resp.text())[:200]}"
            async for line in resp.content:     # JSON parsed only for the usage: the client shares the cores
                if not line.startswith(b"data: {"):
                    continue
                if CONTENT.search(line):
                    times.append(time.perf_counter())
                elif USAGE.search(line):
                    usage = json.loads(line[6:])["usage"]
    except Exception as e:  # noqa: BLE001 - a benchmark reports what broke and goes on
        return None, times, 0, repr(e)
    n = usage["completion_tokens"] if usage else len(times)
    if not times:
        return None, times, n, "no content"
    return times[0] - t0, times, n, None


class Round:
    def __init__(self):
        self.ttft, self.decode, self.aggregate, self.errors = [], [], [], []

    async def run(self, session, url, batch: list[list[dict]], max_tokens: int):
        t0 = time.perf_counter()
        res = await asyncio.gather(*[one_stream(session, url, m, max_tokens) for m in batch])
        wall = time.perf_counter() - t0
        total = 0
        for ttft, times, n, err in res:
            if err:
                self.errors.append(err)
                continue
            self.ttft.append(ttft)
            total += n
            if len(times) > 1:
                self.decode.append((n - 1) / (times[-1] - times[0]))
        self.aggregate.append(total / wall)


def p(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


def start_llama(binary, gguf, threads, slots, tmp):
    port = free_port()
    log = open(tmp / "llama-server.log", "wb")
    proc = subprocess.Popen([binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                             "-t", str(threads), "-c", str(slots * 2048), "-np", str(slots), "--jinja"],
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, wait_healthy(proc, port, 120, "llama-server", tmp / "llama-server.log")


def rss_mib(pid: int) -> tuple[float, float]:
    st = dict(line.split(":", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(st["VmRSS"].split()[0]) / 1024, int(st["VmHWM"].split()[0]) / 1024


async def scenarios(a, urls, prompts):
    import aiohttp
    plan = {"single": (1, 100), "load8": (8, 100), "load16": (16, 100), "long": (1, 1440), "fill8": (8, 1900)}
    out = {}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64)) as session:
        for name in a.only:
            if name not in plan:
                continue
            streams, tokens = plan[name]
            rounds = {k: Round() for k in urls}
            for r in range(-1, a.rounds):
                batch = [prompts.messages(tokens) for _ in range(streams)]
                for k, url in urls.items():
                    rd = Round() if r < 0 else rounds[k]        # round -1 warms both up
                    await rd.run(session, url, batch, a.max_tokens)
            out[name] = rounds
            print_scenario(name, rounds, streams)
    return out


async def warm(urls, prompts):
    import aiohttp
    async with aiohttp.ClientSession() as session:
        for url in urls.values():
            await Round().run(session, url, [prompts.messages(20)], 8)


def row(label, ours, theirs, unit, better="higher"):
    ratio = ours / theirs if theirs else float("nan")
    print(f"  {label:<28} npuflow {ours:>9.2f} {unit:<6} llama-server {theirs:>9.2f} {unit:<6} "
          f"ratio {ratio:>5.2f}x ({better} is better)")


def print_scenario(name, rounds, streams):
    n, l = rounds["npuflow"], rounds["llama"]
    print(f"{name}: {streams} stream(s), {len(n.aggregate)} rounds, errors npuflow {len(n.errors)} "
          f"llama-server {len(l.errors)}", flush=True)
    for k, r in rounds.items():
        for e in r.errors[:3]:
            print(f"    {k} error: {e}")
    if streams == 1:
        row("decode tok/s (median)", statistics.median(n.decode), statistics.median(l.decode), "tok/s")
        row("TTFT (median)", p(n.ttft, 50) * 1e3, p(l.ttft, 50) * 1e3, "ms", "lower")
    else:
        row("aggregate tok/s (median)", statistics.median(n.aggregate), statistics.median(l.aggregate), "tok/s")
        row("TTFT p50", p(n.ttft, 50) * 1e3, p(l.ttft, 50) * 1e3, "ms", "lower")
        row("TTFT p95", p(n.ttft, 95) * 1e3, p(l.ttft, 95) * 1e3, "ms", "lower")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds per scenario and server")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slots", type=int, default=8, help="llama-server's parallel slots (-np)")
    ap.add_argument("--max-batch", type=int, default=0, help="npuflow's max_batch (0 = its default)")
    ap.add_argument("--kv-cache", default="", help="npuflow's kv_cache (float32 | int8; \"\" = its default)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the npuflow stack")
    a = ap.parse_args()
    a.only = [s for s in a.only.split(",") if s]
    binary = os.environ.get("LLAMA_SERVER")
    if not binary:
        raise SystemExit("set LLAMA_SERVER to a llama-server binary (../shared/peers/llama_server.sh builds one)")

    from tokenizers import Tokenizer
    from npuflow.config import load_settings
    from npuflow.models.resolve import resolve_model
    settings = load_settings(env={k: v for k, v in os.environ.items() if k == "NPUFLOW_CACHE_DIR"})
    pkg = resolve_model("default", settings.server.cache_dir, MODEL)
    gguf = pathlib.Path(settings.server.cache_dir) / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    prompts = Prompts(Tokenizer.from_file(str(pkg.tokenizer_path)))
    models = f'[[models]]\nid = "{MODEL}"\nthreads = {a.threads}\n'
    if a.max_batch:
        models += f"max_batch = {a.max_batch}\n"
    if a.kv_cache:
        models += f'kv_cache = "{a.kv_cache}"\n'
    env = dict(kv.split("=", 1) for kv in a.env)
    print(f"npuflow ({models.strip().replace(chr(10), ', ')}{', ' + str(env) if env else ''}) vs llama-server "
          f"(-t {a.threads} -np {a.slots} -c {a.slots * 2048}); {a.max_tokens} tokens per request, "
          f"{a.rounds} rounds", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        stack, base = serve(tmp, models, request_timeout=600, env=env)
        llama, lbase = start_llama(binary, gguf, a.threads, a.slots, tmp)
        try:
            pids = {"npuflow": stack_process(stack.pid, "npuflow-worker"), "llama": llama.pid}
            if "rss" in a.only:
                asyncio.run(warm({"npuflow": base, "llama": lbase}, prompts))
                (nr, _), (lr, _) = rss_mib(pids["npuflow"]), rss_mib(pids["llama"])
                print("rss: started, one short request each")
                row("resident", nr, lr, "MiB", "lower")
            asyncio.run(scenarios(a, {"npuflow": base, "llama": lbase}, prompts))
            if "rss" in a.only:
                (nr, nh), (lr, lh) = rss_mib(pids["npuflow"]), rss_mib(pids["llama"])
                print("rss: after the scenarios above")
                row("resident now", nr, lr, "MiB", "lower")
                row("resident peak", nh, lh, "MiB", "lower")
        finally:
            llama.terminate()
            llama.wait(30)
            stop_stack(stack)


if __name__ == "__main__":
    main()
