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
