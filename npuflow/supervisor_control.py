"""The supervisor's control socket: the gateway asks it to start and stop worker processes.

The supervisor binds a ROUTER at `control_endpoint(settings)`; each gateway connects a DEALER
(services/gateway/supervisor_link.py) and sends ToSupervisor commands, each answered once with
its seq (control.proto). This module holds the per-worker process table and the commands:

- start is idempotent: RUNNING at once when the worker runs; a start while the worker stops is
  answered once the stop has finished and the new process is up.
- stop sends SIGTERM and answers STOPPED when the process has exited (SIGKILL after
  `stop_timeout`); the loop never blocks on it, so other commands are served meanwhile. A stop of
  a worker that does not run is answered at once.
- an unknown model id rescans the settings once (a package may have appeared in models_dir),
  then is an `error` answer.
- a worker that exits without being asked to is an `exited` event (seq 0) to every peer that has
  sent a command; its ipc file is removed.

Restart rule: a worker is restarted by the supervisor itself (with the services' back-off) only
while no gateway peer has sent a command: a gateway that speaks control owns the restarts of
workers (it reloads preloaded models at once, others on their next request), while an older
gateway that never talks on this socket keeps today's behaviour. A worker that refused its
configuration (EX_CONFIG) is never restarted.
"""
from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import zmq

from npuflow.config import Settings
from npuflow.logs import get_logger
from npuflow.transport import make_socket, recv_waiting, remove_ipc_file
from npuflow.v1 import control_pb2

log = get_logger("supervisor")

EX_CONFIG = 78           # npuflow.cli's exit status for a configuration error
CHILD_STOP_S = 10.0      # SIGTERM, then SIGKILL after this long
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
HEALTHY_AFTER_S = 30.0   # a child up this long starts again from the shortest back-off

PS = control_pb2.ProcessState
RUNNING, STOPPING, STOPPED = PS.PROCESS_STATE_RUNNING, PS.PROCESS_STATE_STOPPING, PS.PROCESS_STATE_STOPPED


def control_endpoint(settings: Settings) -> str:
    return f"ipc://{settings.server.run_dir}/supervisor.sock"


@dataclass
class Child:
    """One child process: how to start it, the process, and its restart back-off."""
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_MIN_S
    next_start: float = 0.0
    endpoints: list[str] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(self.argv, env=env)
        self.started = time.monotonic()
        log.info("child started", child=self.name, pid=self.proc.pid, restarts=self.restarts)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Worker(Child):
    """A model's worker as the control socket sees it. `stop_waiters` are answered STOPPED when
    the process exits; `pending` are commands that arrived while it stopped, run in order after."""
    model: str = ""
    state: int = STOPPED
    requested: bool = False
    exit_code: int = 0
    pid: int = 0
    started_unix: float = 0.0
    kill_at: float = 0.0
    killed: bool = False
    stop_waiters: list[tuple[bytes, int]] = field(default_factory=list)
    pending: list[tuple[bytes, int, str]] = field(default_factory=list)

    def describe(self) -> control_pb2.WorkerProcess:
        return control_pb2.WorkerProcess(model=self.model, state=self.state, pid=self.pid,
                                         exit_code=self.exit_code, requested=self.requested,
                                         started_unix=self.started_unix)


class ControlServer:
    """The process table of the workers and the ROUTER that drives it; one thread (the
    supervisor's loop) calls `serve` repeatedly."""

    def __init__(self, settings: Settings, env: dict[str, str], worker_argv: Callable[[str], list[str]]):
        self.settings = settings
        self.env = env
        self.worker_argv = worker_argv
        self.endpoint = control_endpoint(settings)
        self.workers: dict[str, Worker] = {}
        self._add_models(settings)
        self.peers: set[bytes] = set()
        self.stop_timeout = CHILD_STOP_S
        self.closing = False     # shutting down: no more starts
        self._ctx: zmq.Context | None = None
        self.sock: zmq.Socket | None = None
        self._poller = zmq.Poller()

    def _add_models(self, settings: Settings) -> None:
        for m in settings.models:
            if m.id not in self.workers:
                self.workers[m.id] = Worker(f"worker:{m.id}", self.worker_argv(m.id),
                                            endpoints=[m.endpoint], model=m.id)

    @property
    def gateway_owns_restarts(self) -> bool:
        return bool(self.peers)

    def forget_peers(self) -> None:
        """The gateway process exited: until a new one talks, restarts are the supervisor's."""
        self.peers.clear()

    # socket ------------------------------------------------------------------------------
    def bind(self) -> None:
        self._ctx = zmq.Context()
        self.sock = make_socket(self._ctx, zmq.ROUTER, self.endpoint, bind=True)
        self._poller.register(self.sock, zmq.POLLIN)

    def close(self) -> None:
        if self.sock is not None:
            self._poller.unregister(self.sock)
            self.sock.close(linger=0)
            self.sock = None
            remove_ipc_file(self.endpoint)
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def serve(self, timeout_s: float) -> None:
        """Wait up to timeout_s for commands (less while a worker stops), answer every one
        waiting, then look at every worker's process."""
        if any(w.state == STOPPING for w in self.workers.values()):
            timeout_s = min(timeout_s, 0.02)
        if self.sock is not None and self._poller.poll(int(timeout_s * 1000)):
            for peer, msg in recv_waiting(self.sock, control_pb2.ToSupervisor):
                self._command(peer, msg)
        elif self.sock is None:
            time.sleep(timeout_s)
        now = time.monotonic()
        for w in list(self.workers.values()):
            self._check(w, now)

    def _send(self, peer: bytes, msg: control_pb2.FromSupervisor) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send_multipart([peer, msg.SerializeToString()], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.warning("cannot answer the gateway", error=str(e), seq=msg.seq)

    def _answer(self, peer: bytes, seq: int, w: Worker) -> None:
        self._send(peer, control_pb2.FromSupervisor(seq=seq, worker=w.describe()))

    def _error(self, peer: bytes, seq: int, text: str) -> None:
        self._send(peer, control_pb2.FromSupervisor(seq=seq, error=text))

    # commands ----------------------------------------------------------------------------
    def _command(self, peer: bytes, msg: control_pb2.ToSupervisor) -> None:
        self.peers.add(peer)
        kind = msg.WhichOneof("kind")
        if kind == "list":
            workers = [w.describe() for w in self.workers.values() if w.pid]
            self._send(peer, control_pb2.FromSupervisor(seq=msg.seq, workers=control_pb2.WorkerList(workers=workers)))
            return
        if kind not in ("start", "stop"):
            self._error(peer, msg.seq, "empty command")
            return
        model = getattr(msg, kind).model
        w = self._find(model)
        if w is None:
            self._error(peer, msg.seq, f"no model '{model}' in the configuration or the models directory")
            return
        self._check(w, time.monotonic())
        if w.state == STOPPING:
            if kind == "stop" and not w.pending:
                w.stop_waiters.append((peer, msg.seq))
            else:
                w.pending.append((peer, msg.seq, kind))
        elif kind == "start":
            self._start_cmd(w, peer, msg.seq)
        else:
            self._stop_cmd(w, peer, msg.seq)

    def _find(self, model: str) -> Worker | None:
        if model not in self.workers and hasattr(self.settings, "rescan"):
            try:
                self.settings = self.settings.rescan()
            except Exception as e:
                log.warning("cannot rescan the models", error=f"{type(e).__name__}: {e}")
            else:
                self._add_models(self.settings)
        return self.workers.get(model)

    def _start_cmd(self, w: Worker, peer: bytes, seq: int) -> None:
        if not w.alive():
            if self.closing:
                self._error(peer, seq, "the supervisor is stopping")
                return
            try:
                self.start(w.model)
            except OSError as e:
                self._error(peer, seq, f"cannot start the worker of '{w.model}': {e}")
                return
        self._answer(peer, seq, w)

    def _stop_cmd(self, w: Worker, peer: bytes, seq: int) -> None:
        if w.alive():
            w.state, w.requested, w.killed = STOPPING, True, False
            w.kill_at = time.monotonic() + self.stop_timeout
            w.stop_waiters.append((peer, seq))
            w.proc.send_signal(signal.SIGTERM)
            log.info("stopping worker", model=w.model, pid=w.pid)
            return
        w.next_start = float("inf")   # a restart the supervisor had scheduled is off
        self._answer(peer, seq, w)

    # processes ---------------------------------------------------------------------------
    def start(self, model: str) -> Worker:
        """Start the model's worker (it must be in the table and not running)."""
        w = self.workers[model]
        w.start(self.env)
        w.state, w.requested, w.exit_code, w.killed = RUNNING, False, 0, False
        w.pid, w.started_unix = w.proc.pid, time.time()
        return w

    def _check(self, w: Worker, now: float) -> None:
        if w.proc is not None and w.proc.poll() is not None:
            self._exited(w, now)
        elif w.state == STOPPING and not w.killed and now >= w.kill_at:
            log.warning("worker did not stop in time; killing", model=w.model, pid=w.pid)
            w.proc.kill()
            w.killed = True
        elif w.state == RUNNING and now - w.started > HEALTHY_AFTER_S:
            w.backoff = BACKOFF_MIN_S
        elif (w.proc is None and w.state == STOPPED and not w.requested and w.pid
              and not self.gateway_owns_restarts and not self.closing and now >= w.next_start):
            w.restarts += 1
            self.start(w.model)

    def _exited(self, w: Worker, now: float) -> None:
        code, requested = w.proc.returncode, w.state == STOPPING
        w.proc, w.state, w.exit_code, w.requested = None, STOPPED, code, requested
        for ep in w.endpoints:
            remove_ipc_file(ep)
        if requested:
            log.info("worker stopped", model=w.model, pid=w.pid, code=code, killed=w.killed)
            waiters, w.stop_waiters = w.stop_waiters, []
            for peer, seq in waiters:
                self._answer(peer, seq, w)
            self._run_pending(w)
        elif self.gateway_owns_restarts:
            log.error("worker exited; the gateway decides what next", model=w.model, pid=w.pid, code=code)
            w.next_start = float("inf")
            event = control_pb2.FromSupervisor(seq=0, exited=w.describe())
            for peer in self.peers:
                self._send(peer, event)
        elif code == EX_CONFIG:
            log.error("child refused its configuration; not restarting it", child=w.name, pid=w.pid)
            w.next_start = float("inf")
        else:
            log.error("child exited", child=w.name, pid=w.pid, code=code, restart_in_s=w.backoff)
            w.next_start = now + w.backoff
            w.backoff = min(w.backoff * 2, BACKOFF_MAX_S)

    def _run_pending(self, w: Worker) -> None:
        while w.pending and w.state != STOPPING:
            peer, seq, kind = w.pending.pop(0)
            (self._start_cmd if kind == "start" else self._stop_cmd)(w, peer, seq)

    def live(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.alive()]
