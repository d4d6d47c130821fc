"""The supervisor's control socket, end to end: a real Supervisor loop (in a thread) on a real
ipc socket, starting real child processes. A stand-in worker (a few lines of Python that sleep)
replaces `npuflow worker`, and sleepers the tokenizer and gateway, so each test takes well under
a second or two; a model id starting with "stubborn" ignores SIGTERM."""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

import psutil
import zmq

from npuflow.config import ModelSettings, ServerSettings, Settings, TokenizerSettings
from npuflow.supervisor import Supervisor
from npuflow.v1 import control_pb2

PS = control_pb2.ProcessState
STAND_IN = r"""
import os, pathlib, signal, sys, time
from npuflow.process import die_with_parent
die_with_parent()
model, run_dir = sys.argv[1], pathlib.Path(sys.argv[2])
if model.startswith("stubborn"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
(run_dir / f"worker-{model}.sock").touch()   # stands for the worker's ipc socket file
(run_dir / f"{model}.up").write_text(str(os.getpid()))
time.sleep(120)
"""
SLEEPER = [sys.executable, "-c", "from npuflow.process import die_with_parent as d; d(); import time; time.sleep(120)"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_for(run_dir: pathlib.Path, models=("a", "b", "stubborn")) -> Settings:
    return Settings(server=ServerSettings(run_dir=str(run_dir), port=_free_port(), grpc_port=0),
                    tokenizer=TokenizerSettings(endpoint=f"ipc://{run_dir}/tokenizer.sock"),
                    models=tuple(ModelSettings(id=m, endpoint=f"ipc://{run_dir}/worker-{m}.sock") for m in models))


@contextlib.contextmanager
def supervised(preload=(), stop_timeout: float = 10.0, models=("a", "b", "stubborn")):
    """A Supervisor serving its control socket in a thread; yields it, then shuts it down."""
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix="nfsup", dir="/tmp"))   # short: ipc paths are limited
    sup = Supervisor(settings_for(run_dir, models),
                     worker_argv=lambda m: [sys.executable, "-c", STAND_IN, m, str(run_dir)])
    sup.tokenizer.argv = sup.gateway.argv = SLEEPER
    sup.preload = list(preload)
    sup.control.stop_timeout = stop_timeout
    sup.run_dir = run_dir
    started = threading.Event()

    def main():
        sup.start()
        started.set()
        try:
            sup.loop()
        finally:
            sup.shutdown()

    t = threading.Thread(target=main, name="supervisor")
    t.start()
    try:
        assert started.wait(10)
        yield sup
    finally:
        sup.stopping = True
        t.join(30)
        sup.leftover = sorted(f.name for f in run_dir.iterdir())
        shutil.rmtree(run_dir, ignore_errors=True)


class Peer:
    """A gateway's side of the control socket, blocking."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, seq: int, **kind) -> None:
        msg = control_pb2.ToSupervisor(seq=seq)
        for k, model in kind.items():
            getattr(msg, k).SetInParent()
            if model:
                getattr(msg, k).model = model
        self.sock.send(msg.SerializeToString())

    def recv(self, timeout: float = 5.0) -> control_pb2.FromSupervisor:
        assert self.sock.poll(int(timeout * 1000)), "no answer from the supervisor"
        return control_pb2.FromSupervisor.FromString(self.sock.recv())

    def call(self, seq: int, timeout: float = 5.0, **kind) -> control_pb2.FromSupervisor:
        self.send(seq, **kind)
        reply = self.recv(timeout)
        assert reply.seq == seq
        return reply

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@contextlib.contextmanager
def peer(sup: Supervisor):
    p = Peer(sup.control.endpoint)
    try:
        yield p
    finally:
        p.close()


def wait_up(sup: Supervisor, model: str, timeout: float = 10.0) -> int:
    path = sup.run_dir / f"{model}.up"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.01)
    raise AssertionError(f"{model} did not come up")


def test_start_list_stop(tmp_path):
    with supervised() as sup, peer(sup) as p:
        r = p.call(1, start="a").worker
        assert r.model == "a" and r.state == PS.PROCESS_STATE_RUNNING and r.pid > 0 and r.started_unix > 0
        assert wait_up(sup, "a") == r.pid
        assert sup.env["NPUFLOW_CONTROL_ENDPOINT"] == sup.control.endpoint
        assert psutil.Process(r.pid).environ()["NPUFLOW_CONTROL_ENDPOINT"] == sup.control.endpoint
        listed = {w.model: w for w in p.call(2, list=None).workers.workers}
        assert set(listed) == {"a"} and listed["a"].state == PS.PROCESS_STATE_RUNNING
        s = p.call(3, stop="a").worker
        assert s.state == PS.PROCESS_STATE_STOPPED and s.requested and s.exit_code == -signal.SIGTERM
        assert not psutil.pid_exists(r.pid) or psutil.Process(r.pid).status() == psutil.STATUS_ZOMBIE
        assert not (sup.run_dir / "worker-a.sock").exists()
        assert p.call(4, list=None).workers.workers[0].state == PS.PROCESS_STATE_STOPPED
        again = p.call(5, stop="a").worker   # not running: answered at once
        assert again.state == PS.PROCESS_STATE_STOPPED
    assert not pathlib.Path(sup.control.endpoint[len("ipc://"):]).exists()


def test_start_is_idempotent(tmp_path):
    with supervised() as sup, peer(sup) as p:
        first = p.call(1, start="a").worker
        second = p.call(2, start="a").worker
        assert second.state == PS.PROCESS_STATE_RUNNING and second.pid == first.pid
        assert len([c for c in psutil.Process().children() if c.cmdline()[-2:-1] == ["a"]]) == 1


def test_a_worker_that_ignores_sigterm_is_killed_while_other_commands_are_served(tmp_path):
    with supervised(stop_timeout=0.5) as sup, peer(sup) as p:
        old = p.call(1, start="stubborn").worker.pid
        wait_up(sup, "stubborn")
        (sup.run_dir / "stubborn.up").unlink()
        t0 = time.monotonic()
        p.send(2, stop="stubborn")
        p.send(3, start="stubborn")     # waits for the stop
        p.send(4, start="a")            # served while stubborn stops
        first, second = p.recv(), p.recv()
        assert (first.seq, second.seq) == (4, 2) and first.worker.state == PS.PROCESS_STATE_RUNNING
        assert second.worker.state == PS.PROCESS_STATE_STOPPED and second.worker.exit_code == -signal.SIGKILL
        assert 0.4 < time.monotonic() - t0 < 3.0
        third = p.recv()
        assert third.seq == 3 and third.worker.state == PS.PROCESS_STATE_RUNNING and third.worker.pid != old
        assert wait_up(sup, "stubborn") == third.worker.pid


def test_a_stop_during_a_stop_is_answered_with_it(tmp_path):
    with supervised(stop_timeout=0.3) as sup, peer(sup) as p:
        p.call(1, start="stubborn")
        wait_up(sup, "stubborn")
        p.send(2, stop="stubborn")
        p.send(3, list=None)
        listed = p.recv()
        assert listed.seq == 3 and listed.workers.workers[0].state == PS.PROCESS_STATE_STOPPING
        p.send(4, stop="stubborn")
        answers = [p.recv(), p.recv()]
        assert sorted(a.seq for a in answers) == [2, 4]
        assert all(a.worker.state == PS.PROCESS_STATE_STOPPED for a in answers)


def test_a_crash_is_an_exited_event_and_not_restarted(tmp_path):
    with supervised() as sup, peer(sup) as p:
        pid = p.call(1, start="a").worker.pid
        wait_up(sup, "a")
        os.kill(pid, signal.SIGKILL)
        ev = p.recv()
        assert ev.seq == 0 and ev.WhichOneof("kind") == "exited"
        assert ev.exited.model == "a" and ev.exited.exit_code == -signal.SIGKILL and not ev.exited.requested
        assert not (sup.run_dir / "worker-a.sock").exists()
        time.sleep(1.0)   # longer than the shortest restart back-off
        w = p.call(2, list=None).workers.workers[0]
        assert w.state == PS.PROCESS_STATE_STOPPED and w.pid == pid


def test_workers_are_restarted_by_the_supervisor_until_a_gateway_talks(tmp_path):
    with supervised(preload=["a"]) as sup:
        first = wait_up(sup, "a")
        (sup.run_dir / "a.up").unlink()
        os.kill(first, signal.SIGKILL)
        second = wait_up(sup, "a")   # after the 0.5 s back-off
        assert second != first and sup.control.workers["a"].restarts == 1
        with peer(sup) as p:
            assert p.call(1, list=None).workers.workers[0].pid == second
            os.kill(second, signal.SIGKILL)
            assert p.recv().exited.pid == second
            time.sleep(1.0)
            assert sup.control.workers["a"].proc is None


def test_an_unknown_model_is_looked_for_once_more_then_an_error(tmp_path):
    with supervised(models=("a",)) as sup, peer(sup) as p:
        later = settings_for(sup.run_dir, ("a", "late"))
        scans = []

        class Rescanning:
            models = sup.control.settings.models

            def rescan(self):
                scans.append(1)
                return later

        sup.control.settings = Rescanning()
        r = p.call(1, start="late")
        assert r.worker.state == PS.PROCESS_STATE_RUNNING and scans == [1]
        e = p.call(2, start="nope")
        assert e.WhichOneof("kind") == "error" and "nope" in e.error
        assert p.call(3, stop="nope").WhichOneof("kind") == "error"


def test_shutdown_stops_every_worker_and_removes_the_sockets(tmp_path):
    with supervised(preload=["a", "b"]) as sup:
        pids = [wait_up(sup, m) for m in ("a", "b")]
        endpoint = pathlib.Path(sup.control.endpoint[len("ipc://"):])
        assert endpoint.exists()
        services = [sup.tokenizer.proc.pid, sup.gateway.proc.pid]
    for pid in pids + services:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not [f for f in sup.leftover if f.endswith(".sock")], sup.leftover
