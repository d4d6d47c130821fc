"""run_gateway as a child process, with a fake tokenizer and worker for it on a background event loop."""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

import zmq.asyncio

from gw_fakes import FakeTokenizer, FakeWorker
from npuflow.config import DEFAULT_MODEL_ID


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gateway_process(tmp_path, worker_delay: float = 0.05, **env: str) -> Iterator[subprocess.Popen]:
    """Runs run_gateway(load_settings()) with NPUFLOW_RUN_DIR and NPUFLOW_CACHE_DIR in tmp_path plus `env`
    (more NPUFLOW_* variables), its stderr a pipe. The fake worker serves DEFAULT_MODEL_ID with an
    answer of 20 "x" tokens, `worker_delay` seconds apart (1 s in all by default). On exit kills the
    process if it still runs and closes the fakes."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start():
        ctx = zmq.asyncio.Context()
        return ctx, FakeTokenizer(ctx, f"ipc://{tmp_path}/tokenizer.sock", [DEFAULT_MODEL_ID]), \
            FakeWorker(ctx, f"ipc://{tmp_path}/worker-{DEFAULT_MODEL_ID}.sock", DEFAULT_MODEL_ID, 256)

    ctx, tok, worker = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    worker.delay, worker.reply = worker_delay, ["x"] * 20
    env = dict(os.environ, NPUFLOW_RUN_DIR=str(tmp_path), **env, NPUFLOW_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-c", "from npuflow.config import load_settings\n"
                             "from npuflow.gateway import run_gateway\nrun_gateway(load_settings())"],
                            env=env, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()

        async def stop():
            await worker.close()
            await tok.close()
            ctx.term()
        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)


def wait_ready(proc: subprocess.Popen, ready: Callable[[], bool], errors: tuple[type[BaseException], ...],
               what: str, timeout: float = 10.0) -> None:
    """Polls ready() (its `errors` count as not yet) until it is true; fails if the process exits first."""
    end = time.monotonic() + timeout
    while True:
        try:
            if ready():
                break
        except errors:
            pass
        assert time.monotonic() < end and proc.poll() is None, what
        time.sleep(0.05)


def post_stream(port: int, timeout: float) -> http.client.HTTPResponse:
    """Sends a streamed chat completion for DEFAULT_MODEL_ID ("hi") to the gateway's HTTP port
    and returns its response, headers read, body not yet."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": DEFAULT_MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "stream": True}),
        headers={"Content-Type": "application/json"})
    return c.getresponse()
