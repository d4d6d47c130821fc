"""A worker whose model cannot start for good stays up and says so, instead of exiting (and being
restarted in a loop): Hello with state FAILED and the reason, heartbeats, and every request
refused with MODEL_NOT_AVAILABLE; SIGTERM ends it with status 0."""
import os
import signal
import subprocess
import sys
import time

import pytest
import zmq

from npuflow.v1 import common_pb2, worker_pb2

from tiny_package import tiny_package


def _cpu_package(tmp_path, tokenizer_json):
    return tiny_package(tmp_path, tokenizer_json, "")


@pytest.mark.parametrize("case,needle", [("no such source", "nowhere"),
                                         ("ax engine on a cpu package", "pulsar2 or StackFlow model directory")])
def test_a_model_that_cannot_start_is_reported_not_restarted(tmp_path, tokenizer_json, case, needle):
    if case == "no such source":
        model = f'source = "{tmp_path}/nowhere"\n'
    else:
        model = f'source = "{_cpu_package(tmp_path, tokenizer_json)}"\nengine = "ax"\n'
    cfg = tmp_path / "npuflow.toml"
    cfg.write_text(f'[server]\nrun_dir = "{tmp_path}/run"\ncache_dir = "{tmp_path}/cache"\n'
                   f'[[models]]\nid = "m"\n{model}')
    proc = subprocess.Popen([sys.executable, "-m", "npuflow.cli", "worker", "--model", "m"],
                            env={**os.environ, "NPUFLOW_CONFIG": str(cfg)}, stderr=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"ipc://{tmp_path}/run/worker-m.sock")
    try:
        sock.send(worker_pb2.ToWorker(ping=worker_pb2.Ping(sent_unix_ms=7)).SerializeToString())
        assert sock.poll(30_000), f"no answer (worker exit status {proc.poll()})"
        hello = worker_pb2.FromWorker.FromString(sock.recv()).hello
        assert hello.model == "m" and hello.state == common_pb2.MODEL_STATE_FAILED
        assert needle in hello.state_reason and "\n" not in hello.state_reason
        assert sock.poll(2000)
        assert worker_pb2.FromWorker.FromString(sock.recv()).heartbeat.sent_unix_ms == 7
        gen = worker_pb2.ToWorker(generate=worker_pb2.GenerateRequest(request_id="r1", model="m", n=2,
                                                                      prompt_token_ids=[1, 2, 3]))
        sock.send(gen.SerializeToString())
        assert sock.poll(2000)
        events = worker_pb2.FromWorker.FromString(sock.recv()).events.events
        assert sorted(e.index for e in events) == [0, 1]
        assert all(e.finish_reason == common_pb2.FINISH_REASON_ERROR and e.request_id == "r1"
                   and e.error.code == common_pb2.ERROR_CODE_MODEL_NOT_AVAILABLE and needle in e.error.message
                   for e in events)
        time.sleep(1.0)
        assert proc.poll() is None, "the worker exited"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        log = proc.stderr.read()
        assert log.count("level=error") == 1 and "Traceback" not in log, log
        assert not (tmp_path / "run" / "worker-m.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close(0)
        ctx.term()
