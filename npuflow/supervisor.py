"""`npuflow serve`: prepare the models, start tokenizer, workers and gateway, keep them alive.

Children are separate processes started with this interpreter (`python -m npuflow.cli ROLE`).
A child that exits unexpectedly is restarted with a growing back-off. A model that cannot start
for good (bad source, missing runtime, NPU memory) is not a crash: its worker reports it and stays
up (see llm_worker/run.py), so it is not restarted, and the others are served; a child that exits
with a configuration error (status 78) is not restarted either. SIGTERM / SIGINT stop the gateway
first (it drains in-flight requests for server.drain_timeout_s; it is given DRAIN_MARGIN_S more),
then the workers and the tokenizer; whatever has not exited in time is killed, and the ipc socket
files are removed.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from npuflow.config import DRAIN_MARGIN_S, Settings
from npuflow.logs import get_logger
from npuflow.transport import endpoint_in_use, remove_ipc_file


def _can_listen(host: str, port: int) -> bool:
    """Whether a TCP listener could bind host:port now (with SO_REUSEADDR, as the servers bind)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return True                 # an address the server itself will report
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
            except OSError:
                return False
    return True

log = get_logger("supervisor")

EX_CONFIG = 78           # npuflow.cli's exit status for a configuration error

CHILD_STOP_S = 10.0
BACKOFF_MAX_S = 10.0
HEALTHY_AFTER_S = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = 0.5
    next_start: float = 0.0
    endpoints: list[str] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(self.argv, env=env)
        self.started = time.monotonic()
        log.info("child started", child=self.name, pid=self.proc.pid, restarts=self.restarts)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(self, settings: Settings, cli_env: dict[str, str] | None = None):
        self.settings = settings
        self.env = {**os.environ, **(cli_env or {}), "NPUFLOW_SUPERVISED": "1"}
        if settings.config_path:
            self.env["NPUFLOW_CONFIG"] = os.path.abspath(settings.config_path)
        base = [sys.executable, "-m", "npuflow.cli"]
        self.children = [Child("tokenizer", base + ["tokenizer"], endpoints=[settings.tokenizer.endpoint])]
        self.children += [Child(f"worker:{m.id}", base + ["worker", "--model", m.id], endpoints=[m.endpoint])
                          for m in settings.models]
        self.gateway = Child("gateway", base + ["gateway"])
        self.children.append(self.gateway)
        self.stopping = False

    def prepare_models(self) -> dict[str, str]:
        """Fetch and convert every configured model once, here, with progress, so the children
        only load finished packages. Returns the models that cannot be prepared, with the reason
        (one log line each): their workers report them as failed and the others are served."""
        from npuflow.models.resolve import resolve_model
        failed = {}
        for m in self.settings.models:
            t = time.monotonic()
            try:
                pkg = resolve_model(m.source, self.settings.server.cache_dir, m.id)
            except Exception as e:
                failed[m.id] = f"{type(e).__name__}: {' '.join(str(e).split())}"
                log.error("cannot prepare model; serving the others", model=m.id, error=failed[m.id])
                continue
            log.info("model ready", model=m.id, package=str(pkg.path), seconds=round(time.monotonic() - t, 2))
        return failed

    def _on_signal(self, signum, _frame) -> None:
        if not self.stopping:
            log.info("stopping", signal=signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        failed = self.prepare_models()
        if failed and len(failed) == len(self.settings.models):
            log.error("no model can be served")
            return 1
        if self.stopping:
            return 0
        busy = [ep for c in self.children for ep in c.endpoints if endpoint_in_use(ep)]
        if busy:
            log.error("another npuflow is running with the same run_dir; stop it or set server.run_dir",
                      endpoints=",".join(busy))
            return 1
        taken = self._ports_taken()
        if taken:
            log.error("a port is taken by another program; stop it or set server.port / server.grpc_port",
                      ports=",".join(taken))
            return 1
        for c in self.children:
            c.start(self.env)
        ready_logged = False
        while not self.stopping:
            time.sleep(0.1)
            now = time.monotonic()
            for c in self.children:
                self._watch(c, now)
            if not ready_logged and self._healthy():
                s = self.settings.server
                log.info("ready", url=f"http://{s.host}:{s.port}/v1", models=",".join(m.id for m in self.settings.models))
                ready_logged = True
        self.shutdown()
        return 0

    def _ports_taken(self) -> list[str]:
        """The HTTP and gRPC addresses another program listens on (checked before starting, so a
        taken port is one error here rather than a gateway restarting with back-off)."""
        s = self.settings.server
        taken = []
        for host, port in ((s.host, s.port), (s.grpc_host, s.grpc_port)):
            if port and not _can_listen(host, port):
                taken.append(f"{host}:{port}")
        return taken

    def _watch(self, c: Child, now: float) -> None:
        if c.alive():
            if now - c.started > HEALTHY_AFTER_S:
                c.backoff = 0.5
            return
        if c.proc is not None and c.proc.returncode == EX_CONFIG:
            log.error("child refused its configuration; not restarting it", child=c.name, pid=c.proc.pid)
            c.proc, c.next_start = None, float("inf")
            return
        if c.proc is not None:
            log.error("child exited", child=c.name, pid=c.proc.pid, code=c.proc.returncode,
                      restart_in_s=c.backoff)
            c.proc = None
            c.next_start = now + c.backoff
            c.backoff = min(c.backoff * 2, BACKOFF_MAX_S)
            for ep in c.endpoints:
                remove_ipc_file(ep)
        elif now >= c.next_start:
            c.restarts += 1
            c.start(self.env)

    def _healthy(self) -> bool:
        s = self.settings.server
        try:
            with urllib.request.urlopen(f"http://{s.host}:{s.port}/health", timeout=0.5) as r:
                return r.status == 200
        except OSError:
            return False

    def shutdown(self) -> None:
        """Gateway first (drains), then the others; kill what does not stop; remove ipc files."""
        self._stop([self.gateway], self.settings.server.drain_timeout_s + DRAIN_MARGIN_S)
        self._stop([c for c in self.children if c is not self.gateway], CHILD_STOP_S)
        for c in self.children:
            for ep in c.endpoints:
                remove_ipc_file(ep)
        log.info("stopped")

    @staticmethod
    def _stop(children: list[Child], timeout: float) -> None:
        live = [c for c in children if c.alive()]
        for c in live:
            c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for c in live:
            try:
                c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child did not stop in time; killing", child=c.name, pid=c.proc.pid)
                c.proc.kill()
                c.proc.wait()


def run_supervisor(settings: Settings, cli_env: dict[str, str] | None = None) -> int:
    from npuflow.process import start_process
    start_process("supervisor", settings.server.log_level)
    return Supervisor(settings, cli_env).run()
