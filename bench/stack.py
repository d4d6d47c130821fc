"""Start and stop an `npuflow serve` of the bench scripts: a free loopback port, its own run
directory under the given temporary folder, gRPC off; the default model, or the models given."""
from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

MODEL = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stack(tmp: pathlib.Path, *, max_batch: int, max_queue: int, request_timeout: float,
                env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start `npuflow serve` of the default model (its output in tmp/stack.log, `env` added to
    the environment) and wait up to 900 s for /health to answer 200; returns the process and the
    /v1 base URL."""
    models = f'[[models]]\nid = "{MODEL}"\nmax_batch = {max_batch}\nmax_queue = {max_queue}\n'
    return serve(tmp, models, request_timeout=request_timeout, env=env)


def serve(tmp: pathlib.Path, models: str, *, request_timeout: float,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`npuflow serve` of the given [[models]] TOML text, as start_stack runs it."""
    port = free_port()
    cfg = tmp / "npuflow.toml"
    cfg.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\nrun_dir = "{tmp}/run"\ngrpc_port = 0\n'
                   f'log_level = "warning"\nrequest_timeout_s = {request_timeout}\n' + models)
    log = open(tmp / "stack.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "npuflow.cli", "serve", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
    return proc, wait_healthy(proc, port, 900, "npuflow serve", tmp / "stack.log")


def wait_healthy(proc: subprocess.Popen, port: int, seconds: float, name: str, log: pathlib.Path) -> str:
    """Wait until http://127.0.0.1:port/health answers 200 (else kill proc and exit); the /v1 URL."""
    base = f"http://127.0.0.1:{port}"
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited ({proc.returncode}): see {log}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return base + "/v1"
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{name} did not become healthy")


def stop_stack(proc: subprocess.Popen) -> None:
    """SIGTERM, then kill if it has not exited within 60 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def stack_process(root: int, name: str) -> int:
    """The pid of the process under `root` (the `npuflow serve` process) whose command line starts
    with `name` (the stack's processes name themselves: npuflow-worker, npuflow-gateway, ...)."""
    parent, cmds = {}, {}
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmds[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    for pid, cmd in cmds.items():
        p = pid
        while p > 1 and p != root:
            p = parent.get(p, 1)
        if p == root and cmd.startswith(name):
            return pid
    raise SystemExit(f"no {name} process found under the stack")


def cpu_seconds(pid: int) -> float:
    """CPU time of all of a process's threads so far (/proc schedstat: nanoseconds, no tick rounding)."""
    tasks = pathlib.Path(f"/proc/{pid}/task")
    total = 0
    for t in tasks.iterdir():
        try:
            total += int((t / "schedstat").read_text().split()[0])
        except OSError:
            continue
    return total / 1e9
