"""run_gateway as a process: serves, and on SIGTERM drains in-flight streams, then exits 0."""
import http.client
import json
import signal

from gw_process import free_port, gateway_process, post_stream, wait_ready


def test_sigterm_drains(tmp_path):
    port = free_port()
    with gateway_process(tmp_path, NPUFLOW_PORT=str(port), NPUFLOW_GRPC_PORT="0") as proc:
        def healthy() -> bool:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            return c.getresponse().status == 200

        wait_ready(proc, healthy, (OSError,), "gateway did not become healthy")
        r = post_stream(port, timeout=10)
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
