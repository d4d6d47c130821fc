"""run_gateway with its gRPC port, over TLS from the config: serves next to HTTP, and on SIGTERM
lets a running gRPC stream finish, then exits 0."""
import shutil
import signal
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gw_process import free_port, gateway_process, wait_ready
from npuflow.config import DEFAULT_MODEL_ID
from npuflow.v1 import generation_service_pb2 as gs, generation_service_pb2_grpc as gs_grpc


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
    port, grpc_port = free_port(), free_port()
    with gateway_process(tmp_path, NPUFLOW_PORT=str(port), NPUFLOW_GRPC_PORT=str(grpc_port),
                         NPUFLOW_GRPC_TLS_CERT=str(cert), NPUFLOW_GRPC_TLS_KEY=str(key),
                         NPUFLOW_API_KEYS="k1") as proc:
        channel = grpc.secure_channel(f"127.0.0.1:{grpc_port}", grpc.ssl_channel_credentials(cert.read_bytes()))
        try:
            health = health_pb2_grpc.HealthStub(channel)
            wait_ready(proc, lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=1).status ==
                       health_pb2.HealthCheckResponse.SERVING, (grpc.RpcError,), "gRPC health never SERVING")
            call = gs_grpc.GenerationServiceStub(channel).Generate(
                gs.GenerateTextRequest(model=DEFAULT_MODEL_ID, prompt="hi"),
                metadata=(("authorization", "Bearer k1"),), timeout=10)
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
