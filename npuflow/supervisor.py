"""`npuflow serve`: prepare the models, start tokenizer, gateway and the preloaded workers, keep
the services alive, and start or stop other workers when the gateway asks.

Children are separate processes started with this interpreter (`python -m npuflow.cli ROLE`).
At start the configured models are fetched and converted once, here (models found in
server.models_dir are converted by their worker on first load); "auto" memory budgets are
resolved once and handed to every child (NPUFLOW_MEMORY_BUDGET), so all agree; and the workers of
the preload models that fit the budget together are started. Every other worker is started and
stopped over the control socket (supervisor_control.py), whose commands the main loop serves
between looks at the children.

The tokenizer and the gateway are restarted with a growing back-off when they exit unexpectedly,
unless they exit with a configuration error (status 78). Workers follow the restart rule of
supervisor_control.py: once the gateway has sent a command on the control socket it owns their
restarts (a worker's own exit is reported to it and the worker is not restarted here); until
then, and with an older gateway that never talks on it, the supervisor restarts them as it does
the services. A model that cannot start for good (bad source, missing runtime, NPU memory) is not
a crash: its worker reports it and stays up (see llm_worker/run.py).

SIGTERM / SIGINT stop the gateway first (it drains in-flight requests for
server.drain_timeout_s; it is given DRAIN_MARGIN_S more, while the control socket is still
served), then the workers and the tokenizer; whatever has not exited in time is killed, and the
ipc socket files (the control socket's too) are removed.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from typing import Callable

from npuflow.config import DRAIN_MARGIN_S, Settings
from npuflow.logs import get_logger
from npuflow.supervisor_control import (BACKOFF_MAX_S, BACKOFF_MIN_S, CHILD_STOP_S, EX_CONFIG,  # noqa: F401
                                        HEALTHY_AFTER_S, Child, ControlServer, control_endpoint)
from npuflow.transport import endpoint_in_use, remove_ipc_file

log = get_logger("supervisor")

POLL_S = 0.1   # the longest the loop waits for a command before looking at the children


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


def preload_plan(settings: Settings) -> tuple[list[str], str]:
    """The preload models whose workers start now (config order, those that fit the budget
    together; a model whose footprint cannot be read is started too: it cannot be prepared and
    its worker reports why), and the resolved budget for the children's env ("" = none set)."""
    preload = [m for m in settings.models if getattr(m, "preload", True)]
    text = getattr(settings.server, "memory_budget", "")
    try:
        from npuflow.models.budget import budget_env, format_bytes, plan_preload, resolve_budget
        from npuflow.models.footprint import footprint
    except ImportError:
        return [m.id for m in preload], ""
    budget = resolve_budget(text)
    sizes, unknown = {}, set()
    for m in preload:
        try:
            sizes[m.id] = footprint(m, settings.server.cache_dir)
        except Exception as e:
            unknown.add(m.id)
            log.warning("cannot read the model's footprint", model=m.id, error=f"{type(e).__name__}: {e}")
    fits = set(plan_preload([m for m in preload if m.id in sizes], sizes, budget))
    for m in preload:
        if m.id in sizes and m.id not in fits:
            log.warning("preload model does not fit the memory budget; it loads on demand", model=m.id,
                        footprint=format_bytes(sizes[m.id].bytes), pool=sizes[m.id].pool, budget=budget.describe())
    return [m.id for m in preload if m.id in fits or m.id in unknown], (budget_env(budget) if text else "")


class Supervisor:
    def __init__(self, settings: Settings, cli_env: dict[str, str] | None = None,
                 worker_argv: Callable[[str], list[str]] | None = None):
        self.settings = settings
        self.env = {**os.environ, **(cli_env or {}), "NPUFLOW_SUPERVISED": "1",
                    "NPUFLOW_CONTROL_ENDPOINT": control_endpoint(settings)}
        if settings.config_path:
            self.env["NPUFLOW_CONFIG"] = os.path.abspath(settings.config_path)
        base = [sys.executable, "-m", "npuflow.cli"]
        self.tokenizer = Child("tokenizer", base + ["tokenizer"], endpoints=[settings.tokenizer.endpoint])
        self.gateway = Child("gateway", base + ["gateway"])
        self.services = [self.tokenizer, self.gateway]
        self.control = ControlServer(settings, self.env, worker_argv or (lambda m: base + ["worker", "--model", m]))
        self.preload = [m.id for m in settings.models if getattr(m, "preload", True)]
        self.stopping = False
        self._ready = threading.Event()

    def prepare_models(self) -> dict[str, str]:
        """Fetch and convert every configured model once, here, with progress, so the children
        only load finished packages. Returns the models that cannot be prepared, with the reason
        (one log line each): their workers report them as failed and the others are served."""
        from npuflow.models.resolve import resolve_model
        failed = {}
        for m in self._configured():
            t = time.monotonic()
            try:
                pkg = resolve_model(m.source, self.settings.server.cache_dir, m.id, int8=m.int8)
            except Exception as e:
                failed[m.id] = f"{type(e).__name__}: {' '.join(str(e).split())}"
                log.error("cannot prepare model; serving the others", model=m.id, error=failed[m.id])
                continue
            log.info("model ready", model=m.id, package=str(pkg.path), seconds=round(time.monotonic() - t, 2))
        return failed

    def _configured(self) -> list:
        return [m for m in self.settings.models if not getattr(m, "discovered", False)]

    def _on_signal(self, signum, _frame) -> None:
        if not self.stopping:
            log.info("stopping", signal=signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        failed = self.prepare_models()
        configured = self._configured()
        if configured and len(failed) == len(configured) and not getattr(self.settings.server, "models_dir", ""):
            log.error("no model can be served")
            return 1
        if self.stopping:
            return 0
        endpoints = [self.control.endpoint, self.tokenizer.endpoints[0]]
        endpoints += [ep for w in self.control.workers.values() for ep in w.endpoints]
        busy = [ep for ep in endpoints if endpoint_in_use(ep)]
        if busy:
            log.error("another npuflow is running with the same run_dir; stop it or set server.run_dir",
                      endpoints=",".join(busy))
            return 1
        taken = self._ports_taken()
        if taken:
            log.error("a port is taken by another program; stop it or set server.port / server.grpc_port",
                      ports=",".join(taken))
            return 1
        self.preload, budget = preload_plan(self.settings)
        if budget:
            self.env["NPUFLOW_MEMORY_BUDGET"] = budget
        self.start()
        try:
            self.loop()
        finally:
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

    def start(self) -> None:
        """Bind the control socket, then start the tokenizer, the preloaded workers, the gateway."""
        self.control.bind()
        self.tokenizer.start(self.env)
        for model in self.preload:
            self.control.start(model)
        self.gateway.start(self.env)
        threading.Thread(target=self._log_ready, name="ready_probe", daemon=True).start()

    def loop(self) -> None:
        while not self.stopping:
            self.control.serve(POLL_S)
            now = time.monotonic()
            for c in self.services:
                self._watch(c, now)

    def _watch(self, c: Child, now: float) -> None:
        if c.alive():
            if now - c.started > HEALTHY_AFTER_S:
                c.backoff = BACKOFF_MIN_S
            return
        if c.proc is not None and c is self.gateway:
            self.control.forget_peers()
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

    def _log_ready(self) -> None:
        """Log "ready" once the gateway answers /health (off the loop: a probe may take 0.5 s)."""
        s = self.settings.server
        while not self.stopping and not self._ready.is_set():
            try:
                with urllib.request.urlopen(f"http://{s.host}:{s.port}/health", timeout=0.5) as r:
                    if r.status == 200:
                        log.info("ready", url=f"http://{s.host}:{s.port}/v1",
                                 models=",".join(m.id for m in self.settings.models))
                        self._ready.set()
                        return
            except Exception:   # refused, reset, or not HTTP yet: the gateway is not up
                pass
            time.sleep(0.1)

    def shutdown(self) -> None:
        """Gateway first (drains; the control socket is served meanwhile), then the workers and
        the tokenizer; kill what does not stop; remove the ipc files."""
        self.stopping = True
        self.control.closing = True
        self._stop([self.gateway], self.settings.server.drain_timeout_s + DRAIN_MARGIN_S, serve=self.control.serve)
        self._stop([self.tokenizer, *self.control.live()], self.control.stop_timeout)
        for c in [*self.services, *self.control.workers.values()]:
            for ep in c.endpoints:
                remove_ipc_file(ep)
        self.control.close()
        log.info("stopped")

    @staticmethod
    def _stop(children: list[Child], timeout: float, serve: Callable[[float], None] | None = None) -> None:
        """SIGTERM each live child, wait up to timeout for all (serving `serve` meanwhile), then
        SIGKILL the rest."""
        live = [c for c in children if c.alive()]
        for c in live:
            c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(c.proc.poll() is None for c in live) and time.monotonic() < deadline:
            if serve is not None:
                serve(0.05)
            else:
                time.sleep(0.02)
        for c in live:
            if c.proc.poll() is None:
                log.warning("child did not stop in time; killing", child=c.name, pid=c.proc.pid)
                c.proc.kill()
                c.proc.wait()


def run_supervisor(settings: Settings, cli_env: dict[str, str] | None = None) -> int:
    from npuflow.process import start_process
    start_process("supervisor", settings.server.log_level)
    return Supervisor(settings, cli_env).run()
