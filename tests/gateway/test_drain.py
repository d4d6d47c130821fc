"""On SIGTERM the gateway drains HTTP and gRPC requests together within server.drain_timeout_s:
streams longer than that are ended, and the process exits within the budget (not one budget per
protocol, one after the other)."""
import http.client
import signal
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gw_process import free_port, gateway_process, post_stream, wait_ready
from npuflow.config import DEFAULT_MODEL_ID
from npuflow.v1 import generation_service_pb2 as gs, generation_service_pb2_grpc as gs_grpc

DRAIN_S = 2.0
SLACK_S = 2.0   # stopping the clients, process exit, aiohttp's whole-second timeouts


def test_http_and_grpc_drain_share_one_budget(tmp_path):
    port, grpc_port = free_port(), free_port()
    with gateway_process(tmp_path, worker_delay=1.0, NPUFLOW_PORT=str(port), NPUFLOW_GRPC_PORT=str(grpc_port),
                         NPUFLOW_DRAIN_TIMEOUT_S=str(DRAIN_S)) as proc:
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        health = health_pb2_grpc.HealthStub(channel)
        wait_ready(proc, lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=1).status ==
                   health_pb2.HealthCheckResponse.SERVING, (grpc.RpcError,), "gRPC health never SERVING")
        call = gs_grpc.GenerationServiceStub(channel).Generate(
            gs.GenerateTextRequest(model=DEFAULT_MODEL_ID, prompt="hi"), timeout=60)
        grpc_out: list = []

        def read_grpc():
            try:
                grpc_out.extend(m for m in call)
            except grpc.RpcError as e:
                grpc_out.append(e.code())
        reader = threading.Thread(target=read_grpc)
        reader.start()
        r = post_stream(port, timeout=60)
        assert r.status == 200
        time.sleep(0.5)     # both streams are running: 20 tokens, one a second
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            for _ in r:     # the stream ends (cut) at the end of the budget
                pass
        except (http.client.IncompleteRead, ConnectionError):
            pass
        code = proc.wait(DRAIN_S + SLACK_S + 10)
        took = time.monotonic() - t0
        reader.join(10)
        channel.close()
        log = proc.stderr.read().decode()
        print(f"exit {code} after {took:.2f} s (drain_timeout_s {DRAIN_S})")
        assert code == 0 and "Traceback" not in log, log
        assert DRAIN_S - 0.5 <= took <= DRAIN_S + SLACK_S, log
        assert "seconds=2.0" in log and "msg=draining" in log
        assert grpc_out and grpc_out[-1] != grpc.StatusCode.OK
