"""run_gateway with its gRPC port, over TLS from the config: serves next to HTTP, and on SIGTERM
lets a running gRPC stream finish, then exits 0."""
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest
import zmq.asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gw_fakes import FakeTokenizer, FakeWorker
from npuflow.config import DEFAULT_MODEL_ID
from npuflow.v1 import generation_service_pb2 as gs, generation_service_pb2_grpc as gs_grpc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_signed(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_tls_and_sigterm_drain(tmp_path):
    cert, key = _self_signed(tmp_path)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start():
        ctx = zmq.asyncio.Context()
        return ctx, FakeTokenizer(ctx, f"ipc://{tmp_path}/tokenizer.sock", [DEFAULT_MODEL_ID]), \
            FakeWorker(ctx, f"ipc://{tmp_path}/worker-{DEFAULT_MODEL_ID}.sock", DEFAULT_MODEL_ID, 256)

    ctx, tok, worker = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    worker.delay, worker.reply = 0.05, ["x"] * 20          # a 1 s answer
    port, grpc_port = _free_port(), _free_port()
    env = dict(os.environ, NPUFLOW_RUN_DIR=str(tmp_path), NPUFLOW_PORT=str(port), NPUFLOW_GRPC_PORT=str(grpc_port),
               NPUFLOW_GRPC_TLS_CERT=str(cert), NPUFLOW_GRPC_TLS_KEY=str(key), NPUFLOW_API_KEYS="k1",
               NPUFLOW_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-c", "from npuflow.config import load_settings\n"
                             "from npuflow.gateway import run_gateway\nrun_gateway(load_settings())"],
                            env=env, stderr=subprocess.PIPE)
    channel = grpc.secure_channel(f"127.0.0.1:{grpc_port}", grpc.ssl_channel_credentials(cert.read_bytes()))
    try:
        health = health_pb2_grpc.HealthStub(channel)
        end = time.monotonic() + 10
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < end and proc.poll() is None, "gRPC health never SERVING"
            time.sleep(0.05)
        call = gs_grpc.GenerationServiceStub(channel).Generate(
            gs.GenerateTextRequest(model=DEFAULT_MODEL_ID, prompt="hi"), metadata=(("authorization", "Bearer k1"),),
            timeout=10)
        first = next(call)
        proc.send_signal(signal.SIGTERM)
        rest = list(call)
        assert "".join(c.text for m in [first, *rest] for c in m.choices) == "x" * 20
        assert rest[-1].usage.completion_tokens == 20
        assert proc.wait(10) == 0
        log = proc.stderr.read().decode()
        assert "Traceback" not in log and "msg=draining" in log and "grpc listening" in log, log
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()

        async def stop():
            await worker.close()
            await tok.close()
            ctx.term()
        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
