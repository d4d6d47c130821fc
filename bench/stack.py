"""Start and stop an `npuflow serve` of the bench scripts: a free loopback port, its own run
directory under the given temporary folder, gRPC off, one model."""
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
    """Start `npuflow serve` (its output in tmp/stack.log, `env` added to the environment) and
    wait up to 900 s for /health to answer 200; returns the process and the /v1 base URL."""
    port = free_port()
    cfg = tmp / "npuflow.toml"
    cfg.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\nrun_dir = "{tmp}/run"\ngrpc_port = 0\n'
                   f'log_level = "warning"\nrequest_timeout_s = {request_timeout}\n'
                   f'[[models]]\nid = "{MODEL}"\nmax_batch = {max_batch}\nmax_queue = {max_queue}\n')
    log = open(tmp / "stack.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "npuflow.cli", "serve", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
    base = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 900
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"npuflow serve exited: see {tmp / 'stack.log'}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base + "/v1"
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the stack did not become healthy")


def stop_stack(proc: subprocess.Popen) -> None:
    """SIGTERM, then kill if it has not exited within 60 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
