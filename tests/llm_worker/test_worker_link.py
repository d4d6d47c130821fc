"""The worker's socket loop over a real ZMQ ipc socket, with the fake engine."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from npuflow.config import ModelSettings
from npuflow.llm_worker import build_link
from npuflow.v1 import common_pb2, worker_pb2

from worker_helpers import FakeEngine, WorkerPeer

FR = common_pb2
HERE = Path(__file__).parent


class Gateway(WorkerPeer):
    """The gateway's side: one DEALER, protobuf frames."""

    def ping(self):
        self.send(ping=worker_pb2.Ping(sent_unix_ms=int(time.time() * 1000)))

    def generate(self, rid, prompt, **sampling):
        self.send(generate=worker_pb2.GenerateRequest(request_id=rid, model="tiny", prompt_token_ids=prompt,
                                                      sampling=common_pb2.SamplingParams(**sampling)))

    def events_until_final(self, rid, timeout=10.0):
        evs, end = [], time.monotonic() + timeout
        while time.monotonic() < end:
            msg = self.recv()
            if msg.WhichOneof("kind") == "events":
                for ev in msg.events.events:
                    assert ev.request_id == rid
                    evs.append(ev)
                    if ev.finish_reason:
                        return evs
        raise AssertionError("no final event")



@pytest.fixture
def worker(package, hf_tokenizer, tmp_path):
    def start(**engine_kw):
        engine = FakeEngine(hf_tokenizer.get_vocab_size(), **engine_kw)
        model = ModelSettings(id="tiny", endpoint=f"ipc://{tmp_path}/w.sock", max_queue=4)
        link = build_link(engine, package, model)
        stop = threading.Event()
        t = threading.Thread(target=link.serve, args=(stop,), daemon=True)
        t.start()
        started.append((stop, t))
        return link, Gateway(model.endpoint)
    started: list = []
    yield start
    for stop, t in started:
        stop.set()
        t.join(5)
        assert not t.is_alive()
    assert not (tmp_path / "w.sock").exists()


def test_hello_heartbeat_generate(worker, hf_tokenizer):
    link, gw = worker(context_length=64)
    gw.ping()
    hello = gw.recv()
    assert hello.WhichOneof("kind") == "hello"
    h = hello.hello
    assert (h.model, h.context_length, h.max_batch, h.engine, h.pid) == ("tiny", 64, 4, "cpu", os.getpid())
    assert h.vocab_size == hf_tokenizer.get_vocab_size() and list(h.eos_token_ids) == [2] and h.created_unix
    hb = gw.recv()
    assert hb.heartbeat.worker_id == h.worker_id and hb.heartbeat.sent_unix_ms > 0
    gw.generate("r1", [40], max_tokens=4, temperature=0.0)
    evs = gw.events_until_final("r1")
    assert [t for e in evs for t in e.token_ids] == [41, 42, 43, 44]
    assert "".join(e.text for e in evs) == hf_tokenizer.decode([41, 42, 43, 44])
    assert evs[-1].finish_reason == FR.FINISH_REASON_LENGTH and evs[-1].completion_tokens == 4
    gw.close()


def test_abort_and_validation_errors(worker):
    link, gw = worker(context_length=100_000, decode_s=0.01)
    gw.generate("bad", [])
    assert gw.recv().WhichOneof("kind") == "hello"
    ev = gw.events_until_final("bad")[-1]
    assert ev.error.code == FR.ERROR_CODE_INVALID_ARGUMENT
    gw.generate("long", [5], max_tokens=0)
    first = gw.recv()
    assert first.events.events[0].request_id == "long"
    gw.send(abort=worker_pb2.Abort(request_id="long"))
    t0 = time.monotonic()
    evs = gw.events_until_final("long")
    assert evs[-1].finish_reason == FR.FINISH_REASON_ABORT
    assert time.monotonic() - t0 < 0.5 and len(evs) <= 3
    assert link.scheduler.n_running == 0 and sorted(link.scheduler.free_slots) == [0, 1, 2, 3]
    gw.close()


def test_heartbeat_during_long_prefill(worker):
    link, gw = worker(context_length=4096, prefill_s_per_token=0.001)  # 1500 tokens: 1.5 s of prefill
    gw.ping()
    gw.recv(), gw.recv()
    gw.generate("big", list(range(3, 300)) * 5, max_tokens=1)
    worst, got_final = 0.0, False
    t_end = time.monotonic() + 10
    while not got_final and time.monotonic() < t_end:
        t0 = time.monotonic()
        gw.ping()
        while True:  # wait for the heartbeat answering this ping
            msg = gw.recv()
            if msg.WhichOneof("kind") == "events":
                got_final = any(e.finish_reason for e in msg.events.events)
            elif msg.WhichOneof("kind") == "heartbeat":
                break
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.05)
    assert got_final
    assert worst < 0.4, f"a ping waited {worst:.2f} s"
    assert len([c for c in link.scheduler.engine.calls if c[0] == "prefill"]) >= 5
    gw.close()



def test_pings_are_answered_while_one_engine_call_blocks(worker):
    """The I/O thread answers pings while the scheduler is inside a single slow engine call
    (onnxruntime releases the GIL), so a slow step is never mistaken for a dead worker."""
    link, gw = worker(decode_s=1.5)
    gw.ping()
    gw.recv(), gw.recv()  # hello, heartbeat
    gw.generate("slow", [5, 6, 7], max_tokens=3)
    time.sleep(0.2)  # the scheduler is now inside a 1.5 s decode call
    for _ in range(5):
        t0 = time.monotonic()
        gw.ping()
        while gw.recv().WhichOneof("kind") != "heartbeat":
            pass
        assert time.monotonic() - t0 < 0.2
        time.sleep(0.1)
    assert gw.events_until_final("slow", timeout=10)[-1].finish_reason == FR.FINISH_REASON_LENGTH
    gw.close()

SCRIPT = """
import sys
sys.path[:0] = [{here!r}, {tests!r}]   # worker_helpers, and the bpe_tokenizer it imports
from pathlib import Path
from npuflow.config import ModelSettings
from npuflow.llm_worker import build_link
from npuflow.llm_worker.run import serve_until_signalled
from worker_helpers import FakeEngine, make_package
package = make_package(Path({tok!r}))
engine = FakeEngine(package.dims.vocab, context_length=100_000, decode_s=0.01)
link = build_link(engine, package, ModelSettings(id="tiny", endpoint={endpoint!r}))
link.grace_s = 0.5
serve_until_signalled(link)
engine.close()
print("clean exit", flush=True)
"""


def test_sigterm_ends_in_flight_and_exits_0(tokenizer_json, tmp_path):
    endpoint = f"ipc://{tmp_path}/sig.sock"
    code = SCRIPT.format(here=str(HERE), tests=str(HERE.parent), tok=str(tokenizer_json), endpoint=endpoint)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gw = Gateway(endpoint)
    try:
        gw.ping()
        assert gw.recv(timeout=20).WhichOneof("kind") == "hello"
        gw.generate("run", [5], max_tokens=0)
        gw.recv()
        proc.send_signal(signal.SIGTERM)
        evs = gw.events_until_final("run")
        assert evs[-1].finish_reason == FR.FINISH_REASON_ERROR
        assert evs[-1].error.code == FR.ERROR_CODE_WORKER_LOST
        out, err = proc.communicate(timeout=5)
        assert proc.returncode == 0, err
        assert "clean exit" in out
        assert not (tmp_path / "sig.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        gw.close()
