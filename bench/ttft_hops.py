#!/usr/bin/env python3
"""Where time to first token goes: the same one-token answer measured at three depths.

    python bench/ttft_hops.py [--prompt-tokens 1] [--samples 40]

  engine  prefill + argmax on the CPU engine in this process
  worker  a GenerateRequest sent straight to the stack's worker over its ZMQ socket (the worker's
          I/O thread, scheduler, sampling and event framing on top of the engine)
  http    a streamed /v1/completions request to the gateway with the prompt as token ids, on a
          kept-alive connection (gateway, SSE and the HTTP client on top of the worker)
The three are measured in turn, sample by sample, with a pause between (the engine is idle
before each, as it is before a request arrives); medians and minimums are printed with the
difference each layer adds.
"""
from __future__ import annotations

import argparse
import http.client
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
import uuid

import numpy as np
import zmq

MODEL = "smollm2-135m-instruct"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-tokens", type=int, default=1)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from npuflow.config import load_settings
    from npuflow.engine.cpu import CpuEngine
    from npuflow.models.resolve import resolve_model
    from npuflow.v1 import common_pb2, worker_pb2
    pkg = resolve_model("default", load_settings().server.cache_dir, MODEL)
    ids = [int(i) for i in np.random.default_rng(0).integers(100, 40000, a.prompt_tokens)]

    tmp = tempfile.mkdtemp()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = pathlib.Path(tmp) / "c.toml"
    cfg.write_text(f'[server]\nport = {port}\nrun_dir = "{tmp}/run"\ngrpc_port = 0\nlog_level = "warning"\n'
                   f'[[models]]\nid = "{MODEL}"\nthreads = {a.threads}\nmax_batch = 1\n')
    stack = subprocess.Popen([sys.executable, "-m", "npuflow.cli", "serve", "--config", str(cfg)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 600
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > end or stack.poll() is not None:
                    raise SystemExit("the stack did not start")
                time.sleep(0.2)

        engine = CpuEngine(pkg, max_slots=1, context_length=2048, threads=a.threads)
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(f"ipc://{tmp}/run/worker-{MODEL}.sock")
        sampling = common_pb2.SamplingParams(temperature=0.0, max_tokens=1)

        def on_engine() -> float:
            engine.release(0)
            t0 = time.perf_counter()
            int(np.argmax(engine.prefill(0, ids)))
            return time.perf_counter() - t0

        def on_worker() -> float:
            msg = worker_pb2.ToWorker(generate=worker_pb2.GenerateRequest(
                request_id=uuid.uuid4().hex, model=MODEL, prompt_token_ids=ids, sampling=sampling))
            t0 = time.perf_counter()
            dealer.send(msg.SerializeToString())
            while True:
                got = worker_pb2.FromWorker.FromString(dealer.recv())
                if got.WhichOneof("kind") == "events" and any(e.token_ids for e in got.events.events):
                    return time.perf_counter() - t0

        body = json.dumps({"model": MODEL, "prompt": ids, "max_tokens": 1, "temperature": 0, "stream": True})
        conn = http.client.HTTPConnection("127.0.0.1", port)  # kept alive, as SDK clients do

        def on_http() -> float:
            t0 = time.perf_counter()
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            took = None
            for line in r:
                if took is None and line.startswith(b"data: {"):
                    took = time.perf_counter() - t0
            return took

        kinds = {"engine": on_engine, "worker": on_worker, "http": on_http}
        res: dict[str, list[float]] = {k: [] for k in kinds}
        for k, f in kinds.items():  # warm up
            f()
        for _ in range(a.samples):
            for k, f in kinds.items():
                time.sleep(0.2)
                res[k].append(f() * 1e3)
        print(f"{a.prompt_tokens}-token prompt, {a.samples} samples each, threads {a.threads}")
        prev = None
        for k, xs in res.items():
            med, lo = statistics.median(xs), min(xs)
            extra = "" if prev is None else f"   adds {med - prev[0]:+.2f} ms (median), {lo - prev[1]:+.2f} ms (min)"
            print(f"{k:>7}: median {med:7.2f} ms   min {lo:7.2f} ms{extra}")
            prev = (med, lo)
        engine.close()
        dealer.close(0)
        ctx.term()
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(60)


if __name__ == "__main__":
    main()
