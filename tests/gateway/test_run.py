"""run_gateway as a process: serves, and on SIGTERM drains in-flight streams, then exits 0."""
import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import zmq.asyncio

from gw_fakes import FakeTokenizer, FakeWorker
from npuflow.config import DEFAULT_MODEL_ID


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains(tmp_path):
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start():
        ctx = zmq.asyncio.Context()
        return ctx, FakeTokenizer(ctx, f"ipc://{tmp_path}/tokenizer.sock", [DEFAULT_MODEL_ID]), \
            FakeWorker(ctx, f"ipc://{tmp_path}/worker-{DEFAULT_MODEL_ID}.sock", DEFAULT_MODEL_ID, 256)

    ctx, tok, worker = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    worker.delay, worker.reply = 0.05, ["x"] * 20          # a 1 s answer
    port = _free_port()
    env = dict(os.environ, NPUFLOW_RUN_DIR=str(tmp_path), NPUFLOW_PORT=str(port), NPUFLOW_GRPC_PORT="0",
               NPUFLOW_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-c", "from npuflow.config import load_settings\n"
                             "from npuflow.gateway import run_gateway\nrun_gateway(load_settings())"],
                            env=env, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 10
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < end and proc.poll() is None, "gateway did not become healthy"
            time.sleep(0.05)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("POST", "/v1/chat/completions", body=json.dumps(
            {"model": DEFAULT_MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "stream": True}),
            headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        events = [line[5:].strip().decode() for line in r if line.startswith(b"data:")]
        assert events[-1] == "[DONE]" and all("error" not in json.loads(e) for e in events[:-1])
        assert "".join(ch["delta"].get("content", "") for e in events[:-1]
                       for ch in json.loads(e)["choices"]) == "x" * 20
        assert proc.wait(10) == 0
        log = proc.stderr.read().decode()
        assert "Traceback" not in log and "msg=draining" in log, log
        print(log)
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
