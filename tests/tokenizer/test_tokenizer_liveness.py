"""The tokenizer process stays live: probes are answered while a huge text is encoded, and a
model whose tokenizer cannot load is reported while the others are served."""
import os
import random
import signal
import subprocess
import sys
import time

import psutil
import zmq

from npuflow.v1 import common_pb2, tokenizer_pb2

from tiny_package import tiny_package
from tok_helpers import CHATML

PROBE_EVERY_S = 0.1
PROBE_LIMIT_S = 0.5     # the gateway declares the tokenizer down after 1.5 s without an answer


def _package(tmp_path, tokenizer_json):
    return tiny_package(tmp_path, tokenizer_json, CHATML)


def _start(tmp_path, models: str):
    cfg = tmp_path / "npuflow.toml"
    cfg.write_text(f'[server]\nrun_dir = "{tmp_path}/run"\ncache_dir = "{tmp_path}/cache"\n' + models)
    env = {**os.environ, "NPUFLOW_CONFIG": str(cfg)}
    return subprocess.Popen([sys.executable, "-m", "npuflow.cli", "tokenizer"], env=env,
                            stderr=subprocess.PIPE, text=True)


def _probe(rid: str) -> bytes:
    return tokenizer_pb2.TokenizerRequest(request_id=rid, list_models={}).SerializeToString()


def test_probes_are_answered_during_a_huge_encode(tokenizer_json, tmp_path):
    pkg = _package(tmp_path, tokenizer_json)
    proc = _start(tmp_path, f'[[models]]\nid = "tiny"\nsource = "{pkg}"\n')
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"ipc://{tmp_path}/run/tokenizer.sock")
    try:
        sock.send(_probe("first"))
        assert sock.poll(20_000), "no answer"
        sock.recv()
        rss_before = psutil.Process(proc.pid).memory_info().rss
        rnd = random.Random(0)
        words = ["Hello", "world", "naïve", "café", "日本語", "fox", "😀", "return", "x"]
        text = " ".join(rnd.choice(words) + str(rnd.randint(0, 99999)) for _ in range(600_000))[:3_000_000]
        req = tokenizer_pb2.TokenizerRequest(request_id="big", encode=tokenizer_pb2.EncodeRequest(
            model="tiny", chat=tokenizer_pb2.ChatInput(
                messages=[tokenizer_pb2.ChatMessage(role="user", content=text)], add_generation_prompt=True)))
        t0 = time.monotonic()
        sock.send(req.SerializeToString())
        sent: dict[str, float] = {}
        latencies: list[float] = []
        encoded = None
        n = 0
        peak = 0
        while encoded is None and time.monotonic() - t0 < 120:
            rid = f"p{n}"
            n += 1
            sent[rid] = time.monotonic()
            sock.send(_probe(rid))
            peak = max(peak, psutil.Process(proc.pid).memory_info().rss)
            end = time.monotonic() + PROBE_EVERY_S
            while (left := end - time.monotonic()) > 0 and sock.poll(int(left * 1000) + 1):
                resp = tokenizer_pb2.TokenizerResponse.FromString(sock.recv())
                if resp.request_id == "big":
                    encoded = resp
                    took = time.monotonic() - t0
                elif resp.request_id in sent:
                    latencies.append(time.monotonic() - sent.pop(resp.request_id))
            assert not [r for r, t in sent.items() if time.monotonic() - t > PROBE_LIMIT_S], \
                f"probes unanswered for {PROBE_LIMIT_S} s while encoding"
        assert encoded is not None and encoded.WhichOneof("kind") == "encoded", encoded
        assert len(encoded.encoded.token_ids) > 500_000
        time.sleep(0.5)
        sock.send(_probe("after"))
        assert sock.poll(5000)
        sock.recv()
        rss_after = psutil.Process(proc.pid).memory_info().rss
        print(f"encode {took:.2f} s, {len(latencies)} probes, max {max(latencies) * 1000:.1f} ms, "
              f"rss {rss_before / 2**20:.0f} MiB before, {peak / 2**20:.0f} peak, {rss_after / 2**20:.0f} after")
        assert len(latencies) >= 2 and max(latencies) < PROBE_LIMIT_S
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close(0)
        ctx.term()


def test_a_model_whose_tokenizer_cannot_load_is_reported_and_the_others_served(tokenizer_json, tmp_path):
    pkg = _package(tmp_path, tokenizer_json)
    proc = _start(tmp_path, f'[[models]]\nid = "tiny"\nsource = "{pkg}"\n'
                            f'[[models]]\nid = "broken"\nsource = "{tmp_path}/nowhere"\n')
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"ipc://{tmp_path}/run/tokenizer.sock")
    try:
        sock.send(_probe("1"))
        assert sock.poll(20_000), f"no answer: {proc.poll()}"
        models = tokenizer_pb2.TokenizerResponse.FromString(sock.recv()).models.models
        by_id = {m.model: m for m in models}
        assert set(by_id) == {"tiny", "broken"}
        assert by_id["tiny"].vocab_size > 0 and not by_id["tiny"].failed_reason
        assert "nowhere" in by_id["broken"].failed_reason and "\n" not in by_id["broken"].failed_reason
        for model in ("broken", "tiny"):
            sock.send(tokenizer_pb2.TokenizerRequest(request_id=model, encode=tokenizer_pb2.EncodeRequest(
                model=model, text="Hello world")).SerializeToString())
            assert sock.poll(5000)
            resp = tokenizer_pb2.TokenizerResponse.FromString(sock.recv())
            if model == "broken":
                assert resp.error.code == common_pb2.ERROR_CODE_MODEL_NOT_AVAILABLE and "nowhere" in resp.error.message
            else:
                assert resp.encoded.token_ids
        time.sleep(1.0)
        assert proc.poll() is None, "the tokenizer exited"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        log = proc.stderr.read()
        assert log.count("level=error") == 1 and "broken" in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close(0)
        ctx.term()
