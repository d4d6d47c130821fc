"""A real stack (`npuflow serve`) started for tests, with its config, port and log.

The default model is fetched and converted into the user's cache on first use (a few minutes on
a fresh machine) and reused afterwards. Every stack gets its own port, run directory and config.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_ID = "smollm2-135m-instruct"
STARTUP_TIMEOUT_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """A running `npuflow serve` with its config, port and log file."""

    def __init__(self, tmp: pathlib.Path, config: str):
        self.port = free_port()
        self.grpc_port = free_port()
        self.run_dir = tmp / "run"
        self.config = tmp / "npuflow.toml"
        self.config.write_text(config.format(port=self.port, grpc_port=self.grpc_port, run_dir=self.run_dir))
        self.log_path = tmp / "stack.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def grpc_target(self) -> str:
        """host:port of the gateway's gRPC server (when the config sets grpc_port = {grpc_port})."""
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> "Stack":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "npuflow.cli", "serve", "--config", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.wait_healthy(STARTUP_TIMEOUT_S)
        return self

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
        except OSError:
            return 0, {}

    def post(self, path: str, body: dict) -> dict:
        """POST a JSON body to a gateway route (e.g. /tokenize) and return the JSON answer."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def running(self, model_id: str) -> int:
        """Sequences in the model's batch, from the worker's last heartbeat (every 0.2 s)."""
        return self.health()[1]["workers"][model_id]["running"]

    def wait_running(self, model_id: str, want: int, timeout: float) -> bool:
        """True once the model's worker reports `want` running sequences within `timeout` s."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.running(model_id) == want:
                return True
            time.sleep(0.05)
        return False

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"npuflow serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.health()[0] == 200:
                return
            time.sleep(0.2)
        raise TimeoutError(f"stack not healthy after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def worker(self, model_id: str) -> psutil.Process:
        for p in self.children():
            try:
                cmd = " ".join(p.cmdline())  # the process title: "npuflow-worker MODEL"
            except psutil.NoSuchProcess:
                continue
            if cmd.split()[:2] == ["npuflow-worker", model_id]:
                return p
        raise LookupError(f"no worker process for {model_id}")

    def stop(self, timeout: float = 60) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for p in self.children():
                    p.kill()
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# The [server] section Stack fills in (HTTP and gRPC ports, run directory): the start of a config.
SERVER_SECTION = """
[server]
port = {port}
run_dir = "{run_dir}"
grpc_port = {grpc_port}
"""
# It and the default model on one thread; the rest of the default model's settings and more models follow.
SERVER_AND_DEFAULT_MODEL = SERVER_SECTION + """
[[models]]
id = "smollm2-135m-instruct"
threads = 1
"""

MAIN_CONFIG = SERVER_AND_DEFAULT_MODEL + """context_length = 2048

[[models]]
id = "smollm2-second"
threads = 1
context_length = 1024
"""
