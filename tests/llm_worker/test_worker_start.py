"""The worker's start (services/llm_worker/run.py, priority.py): it loads at low CPU priority and
gives every thread of the process its priority back once loaded; Hello and the "model loaded"
log line carry how long the start took; grammar constraints work though their vocabulary is
built after Hello."""
import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from npuflow.llm_worker import priority
from npuflow.v1 import common_pb2, worker_pb2

from worker_helpers import WorkerPeer

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "convert"))
import tinymodels  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> pathlib.Path:
    """A real (random-weight, two-layer) CPU package, converted once."""
    from npuflow.convert import convert
    root = tmp_path_factory.mktemp("tiny-model")
    tinymodels.write_gguf(root / "m.gguf", "llama", "Q8_0")
    convert(root / "m.gguf", root / "pkg")
    return root / "pkg"


def thread_nices(pid: int) -> dict[int, int]:
    """tid -> nice of every thread of pid, from /proc/PID/task/*/stat (field 19)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = pathlib.Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        out[int(tid)] = int(stat.rsplit(")", 1)[1].split()[16])
    return out


def start_worker(tmp_path, source: pathlib.Path, prefix=()) -> tuple[subprocess.Popen, str]:
    cfg = tmp_path / "npuflow.toml"
    cfg.write_text(f'[server]\nrun_dir = "{tmp_path}/run"\ncache_dir = "{tmp_path}/cache"\n'
                   f'[[models]]\nid = "t"\nsource = "{source}"\nthreads = 2\n')
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "npuflow.cli", "worker", "--model", "t"],
                            env={**os.environ, "NPUFLOW_CONFIG": str(cfg)},
                            stderr=subprocess.PIPE, text=True)
    return proc, f"ipc://{tmp_path}/run/worker-t.sock"


def stop_worker(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.stderr.read()


SETPRIV = shutil.which("setpriv")
NO_CAP_SYS_NICE = (SETPRIV, "--bounding-set=-sys_nice", "--inh-caps=-sys_nice")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread priorities are read from /proc")
@pytest.mark.parametrize("capable", [True, False], ids=["as-is", "without-cap_sys_nice"])
def test_a_loaded_worker_has_every_thread_back_at_normal_priority_and_says_how_long_it_took(tmp_path, tiny_model,
                                                                                              capable):
    """As this user: lowered during the load when it can be raised back; without CAP_SYS_NICE
    (and RLIMIT_NICE 0) it is left alone, and one log line says so."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    if not capable and (SETPRIV is None or not priority.has_cap_sys_nice()
                        or resource.getrlimit(resource.RLIMIT_NICE)[0] != 0):
        pytest.skip("needs setpriv, CAP_SYS_NICE to drop and RLIMIT_NICE 0")
    lowers = capable and own < priority.LOW_NICE and priority.can_restore(own)
    proc, endpoint = start_worker(tmp_path, tiny_model, () if capable else NO_CAP_SYS_NICE)
    peer = WorkerPeer(endpoint)
    seen_low = False     # a sample during the load with the main thread and those it started at LOW_NICE
    try:
        peer.send(ping=worker_pb2.Ping(sent_unix_ms=1))
        deadline = time.monotonic() + 60
        while not peer.sock.poll(2):
            assert time.monotonic() < deadline and proc.poll() is None, "no Hello"
            try:
                sample = thread_nices(proc.pid)
            except OSError:
                continue
            # every thread but lower_priority's timer, which keeps the normal priority
            seen_low = seen_low or (sample.get(proc.pid) == priority.LOW_NICE
                                    and list(sample.values()).count(own) <= 1)
        hello = peer.recv().hello
        assert hello.state == common_pb2.MODEL_STATE_LOADED and hello.pid == proc.pid
        assert seen_low == lowers
        assert 0 < hello.start_seconds < 30 and 0 < hello.load_seconds < 60
        nices = thread_nices(proc.pid)
        assert len(nices) >= 3     # main, onnxruntime's pool (threads = 2), the socket thread
        assert set(nices.values()) == {own}, nices
    finally:
        peer.close()
        log = stop_worker(proc)
    loaded = [line for line in log.splitlines() if 'msg="model loaded"' in line]
    assert len(loaded) == 1, log
    assert f"start_s={hello.start_seconds:g}" in loaded[0] and f"load_s={hello.load_seconds:g}" in loaded[0]
    assert f"low_priority={lowers}" in loaded[0]
    assert ('msg="loading at low CPU priority"' in log) == lowers, log
    if not capable:
        assert log.count("loading at normal CPU priority") == 1, log


def test_constrained_decoding_works_on_the_first_request_after_hello(tmp_path, tiny_model):
    """The grammar vocabulary is built after Hello (on first use here, before the worker's been
    idle long enough): a grammar request right away is constrained all the same."""
    proc, endpoint = start_worker(tmp_path, tiny_model)
    peer = WorkerPeer(endpoint)
    import llguidance
    grammar = llguidance.LLMatcher.grammar_from_json_schema({"enum": ["yes", "no"]})
    try:
        peer.send(ping=worker_pb2.Ping(sent_unix_ms=1))
        assert peer.recv(timeout=60).hello.state == common_pb2.MODEL_STATE_LOADED
        peer.recv()   # the heartbeat
        peer.send(generate=worker_pb2.GenerateRequest(
            request_id="g", model="t", prompt_token_ids=[5, 6, 7], grammar=grammar, grammar_param="response_format",
            sampling=common_pb2.SamplingParams(max_tokens=8, temperature=0.0)))
        text, done = "", None
        while done is None:
            for ev in peer.recv(timeout=30).events.events:
                text += ev.text
                if ev.finish_reason:
                    done = ev
        assert not done.HasField("error"), done.error
        assert text in ('"yes"', '"no"')
    finally:
        peer.close()
        stop_worker(proc)


LOWER_AND_RESTORE = textwrap.dedent("""
    import json, os, threading, time
    from npuflow.llm_worker import priority
    def nices():
        out = {}
        for t in os.listdir("/proc/self/task"):
            try:
                out[int(t)] = os.getpriority(os.PRIO_PROCESS, int(t))
            except ProcessLookupError:      # a thread that ended while listed
                pass
        return out
    stop = threading.Event()
    def park():
        stop.wait()
    early = threading.Thread(target=park, daemon=True); early.start()   # running before the load
    saved = priority.lower_priority()
    during_low = nices()
    during_low.pop(saved.timer.native_id, None)                   # the cap's timer keeps its priority
    late = threading.Thread(target=park, daemon=True); late.start()     # started during the load
    late_nice = os.getpriority(os.PRIO_PROCESS, late.native_id)
    changed = priority.restore_priority(saved)
    saved.timer.join()
    end = time.monotonic() + 5      # join returns before the kernel task is gone
    while str(saved.timer.native_id) in os.listdir("/proc/self/task") and time.monotonic() < end:
        time.sleep(0.01)
    after = nices()
    stop.set(); early.join(); late.join()
    print(json.dumps({"lowered": saved is not None, "during": sorted(set(during_low.values())), "late": late_nice,
                      "after": sorted(set(after.values())), "changed": changed, "threads": len(after)}))
""")


TIME_CAP = textwrap.dedent("""
    import json, os, time
    from npuflow.llm_worker import priority
    from npuflow.logs import setup_logging
    setup_logging("info")
    saved = priority.lower_priority(max_s=0.3)
    low = os.getpriority(os.PRIO_PROCESS, 0)
    time.sleep(1.0)                      # a load that takes longer than max_s
    print(json.dumps({"low": low, "after": os.getpriority(os.PRIO_PROCESS, 0),
                      "again": priority.restore_priority(saved)}))
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux only")
def test_a_load_longer_than_the_cap_goes_on_at_normal_priority():
    own = os.getpriority(os.PRIO_PROCESS, 0)
    if not (own < priority.LOW_NICE and priority.can_restore(own)):
        pytest.skip("this user could not raise a priority back")
    run = subprocess.run([sys.executable, "-c", TIME_CAP], capture_output=True, text=True, check=True, timeout=60)
    out = json.loads(run.stdout)
    assert out == {"low": priority.LOW_NICE, "after": own, "again": 0}
    assert run.stderr.count("it goes on at normal priority") == 1, run.stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux only")
def test_lower_and_restore_cover_threads_from_before_and_during_the_load():
    own = os.getpriority(os.PRIO_PROCESS, 0)
    if not (own < priority.LOW_NICE and priority.can_restore(own)):
        pytest.skip("this user could not raise a priority back")
    out = json.loads(subprocess.run([sys.executable, "-c", LOWER_AND_RESTORE], capture_output=True, text=True,
                                    check=True, timeout=60).stdout)
    assert out["lowered"] and out["during"] == [priority.LOW_NICE] and out["late"] == priority.LOW_NICE
    assert out["after"] == [own] and out["changed"] == out["threads"] == 3


def test_priority_is_left_alone_when_it_could_not_be_raised_back(monkeypatch):
    monkeypatch.setattr(priority, "has_cap_sys_nice", lambda: False)
    monkeypatch.setattr(priority.resource, "getrlimit", lambda _: (0, 0))
    own = os.getpriority(os.PRIO_PROCESS, 0)
    if own >= priority.LOW_NICE:
        pytest.skip("already at the lowest priority")
    assert not priority.can_restore(own)
    assert priority.lower_priority() is None
    assert os.getpriority(os.PRIO_PROCESS, 0) == own
    assert priority.restore_priority(None) == 0


@pytest.mark.parametrize("soft,nice,ok", [(0, 0, False), (20, 0, True), (10, 0, False), (10, 10, True),
                                          (priority.resource.RLIM_INFINITY, -5, True)])
def test_rlimit_nice_decides_without_cap_sys_nice(monkeypatch, soft, nice, ok):
    monkeypatch.setattr(priority, "has_cap_sys_nice", lambda: False)
    monkeypatch.setattr(priority.resource, "getrlimit", lambda _: (soft, soft))
    assert priority.can_restore(nice) is ok
