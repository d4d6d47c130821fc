"""The real worker process on the default model (fetched and converted on first use)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import zmq

from npuflow.v1 import common_pb2, worker_pb2

# default-model.md: the chat prompt for "Hello, world! How are you?" and its greedy continuation
PROMPT = [1, 4093, 198, 19556, 28, 905, 17, 1073, 359, 346, 47, 2, 198, 1, 520, 9531, 198]
GREEDY = [57, 5248, 588, 18948, 346, 2316, 11904, 260]
GREEDY_LOGPROBS = [-1.727, -0.092, -1.275, -0.649, -0.318, -0.209, -1.290, -1.165]

SCRIPT = """
import dataclasses
from npuflow.config import load_settings
from npuflow.llm_worker import run_worker
s = load_settings()
run_worker(s, dataclasses.replace(s.models[0], max_batch=2, context_length=512))
"""


@pytest.mark.ort_kernels
@pytest.mark.model
def test_default_model_greedy_matches_reference(tmp_path, default_package):
    env = {**os.environ, "NPUFLOW_RUN_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stderr=subprocess.PIPE, text=True)
    endpoint = f"ipc://{tmp_path}/worker-smollm2-135m-instruct.sock"
    ctx = zmq.Context()
    gw = ctx.socket(zmq.DEALER)
    gw.connect(endpoint)
    try:
        hello = None
        end = time.monotonic() + 120
        while hello is None and time.monotonic() < end and proc.poll() is None:
            gw.send(worker_pb2.ToWorker(ping=worker_pb2.Ping(sent_unix_ms=1)).SerializeToString())
            if gw.poll(500):
                msg = worker_pb2.FromWorker.FromString(gw.recv())
                hello = msg.hello if msg.WhichOneof("kind") == "hello" else None
        assert hello is not None, "the worker did not start"
        assert (hello.model, hello.context_length, hello.max_batch, hello.vocab_size) == \
            ("smollm2-135m-instruct", 512, 2, 49152)
        req = worker_pb2.GenerateRequest(request_id="g", prompt_token_ids=PROMPT, sampling=common_pb2.SamplingParams(
            temperature=0.0, max_tokens=8, logprobs=True))
        gw.send(worker_pb2.ToWorker(generate=req).SerializeToString())
        evs = []
        while not (evs and evs[-1].finish_reason):
            assert gw.poll(30_000)
            msg = worker_pb2.FromWorker.FromString(gw.recv())
            if msg.WhichOneof("kind") == "events":
                evs += list(msg.events.events)
        assert [t for e in evs for t in e.token_ids] == GREEDY
        assert "".join(e.text for e in evs) == "I'm so glad you're enjoying the"
        lps = [lp.logprob for e in evs for lp in e.logprobs]
        assert lps == pytest.approx(GREEDY_LOGPROBS, abs=0.2)
        assert evs[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not (tmp_path / "worker-smollm2-135m-instruct.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        gw.close(0)
        ctx.term()
