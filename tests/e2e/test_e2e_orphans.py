"""A tokenizer that dies is restarted and requests succeed again; a supervisor killed outright
takes its children with it (they die with their parent), so nothing is left running."""
import time

import openai
import psutil
import pytest

from e2e_stack import DEFAULT_ID, Stack

pytestmark = pytest.mark.e2e

CONFIG = """
[server]
port = {port}
run_dir = "{run_dir}"
grpc_port = 0

[[models]]
id = "smollm2-135m-instruct"
context_length = 512
"""


def _child(stack, title):
    for p in stack.children():
        try:
            if " ".join(p.cmdline()).split()[:1] == [title]:
                return p
        except psutil.NoSuchProcess:
            pass
    raise LookupError(title)


def test_tokenizer_restart_then_supervisor_kill_leaves_no_orphans(tmp_path):
    stack = Stack(tmp_path, CONFIG).start()
    try:
        client = openai.OpenAI(api_key="sk-", base_url=stack.base_url, max_retries=0, timeout=60)
        msgs = [{"role": "user", "content": "Hi"}]
        old = _child(stack, "npuflow-tokenizer")
        old.kill()
        old.wait(5)
        # while it is down a request either waits for the new one or gets a clear 503
        try:
            r = client.chat.completions.create(model=DEFAULT_ID, messages=msgs, max_tokens=2)
            assert r.usage.completion_tokens >= 1
        except openai.APIStatusError as e:
            assert e.status_code == 503 and "tokenizer" in e.message.lower()
        end = time.monotonic() + 30
        while time.monotonic() < end:  # the supervisor starts a new one after a short back-off
            try:
                new = _child(stack, "npuflow-tokenizer")
                if new.pid != old.pid:
                    break
            except LookupError:
                pass
            time.sleep(0.1)
        assert new.pid != old.pid
        stack.wait_healthy(60)
        r = client.chat.completions.create(model=DEFAULT_ID, messages=msgs, max_tokens=2)
        assert r.usage.completion_tokens >= 1

        children = stack.children()
        assert len(children) >= 3
        stack.proc.kill()  # no chance to clean up: the children must notice on their own
        stack.proc.wait(5)
        end = time.monotonic() + 15
        while time.monotonic() < end and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                             for p in children):
            time.sleep(0.1)
        alive = [p.pid for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"children still running after the supervisor died: {alive}"
    finally:
        for p in stack.children() if stack.proc.poll() is None else []:
            p.kill()
        stack.stop()


def test_a_second_stack_on_the_same_run_dir_refuses_to_start(stack, tmp_path):
    import subprocess
    import sys
    cfg = tmp_path / "second.toml"
    cfg.write_text(stack.config.read_text().replace(f"port = {stack.port}", "port = 1"))
    r = subprocess.run([sys.executable, "-m", "npuflow.cli", "serve", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "same run_dir" in r.stderr
    assert stack.health()[0] == 200  # the running stack kept its sockets


def test_a_taken_port_is_one_error_before_anything_starts(stack, tmp_path):
    """Another program on the gRPC port, the running stack on the HTTP port: serve exits 1 naming
    both, and starts no children."""
    import re
    import socket
    import subprocess
    import sys
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        busy = other.getsockname()[1]
        text = re.sub(r'run_dir = ".*"', f'run_dir = "{tmp_path / "run"}"', stack.config.read_text())
        cfg = tmp_path / "taken.toml"
        cfg.write_text(re.sub(r"grpc_port = \d+", f"grpc_port = {busy}", text))
        r = subprocess.run([sys.executable, "-m", "npuflow.cli", "serve", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "port is taken" in r.stderr
    assert f"127.0.0.1:{busy}" in r.stderr and f"127.0.0.1:{stack.port}" in r.stderr
    assert "child" not in r.stderr and stack.health()[0] == 200
