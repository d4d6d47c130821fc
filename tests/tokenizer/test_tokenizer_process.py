"""run_tokenizer as a process: config -> package folder -> ROUTER; SIGTERM exits 0 and removes the socket."""
import os
import signal
import subprocess
import sys

import zmq

from npuflow.v1 import tokenizer_pb2

from tiny_package import tiny_package
from tok_helpers import CHATML


def test_run_tokenizer_process(tokenizer_json, tmp_path):
    pkg = tiny_package(tmp_path, tokenizer_json, CHATML)
    cfg = tmp_path / "npuflow.toml"
    cfg.write_text(f'[server]\nrun_dir = "{tmp_path}/run"\ncache_dir = "{tmp_path}/cache"\n'
                   f'[[models]]\nid = "tiny"\nsource = "{pkg}"\n')
    env = {**os.environ, "NPUFLOW_CONFIG": str(cfg)}
    code = "from npuflow.config import load_settings; from npuflow.tokenizer import run_tokenizer; run_tokenizer(load_settings())"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"ipc://{tmp_path}/run/tokenizer.sock")
    try:
        sock.send(tokenizer_pb2.TokenizerRequest(request_id="1", list_models={}).SerializeToString())
        assert sock.poll(20_000), "no answer"
        resp = tokenizer_pb2.TokenizerResponse.FromString(sock.recv())
        assert [m.model for m in resp.models.models] == ["tiny"]
        req = tokenizer_pb2.TokenizerRequest(request_id="2", encode=tokenizer_pb2.EncodeRequest(
            model="tiny", chat=tokenizer_pb2.ChatInput(messages=[tokenizer_pb2.ChatMessage(role="user", content="Hi")],
                                                       add_generation_prompt=True)))
        sock.send(req.SerializeToString())
        assert sock.poll(5000)
        resp = tokenizer_pb2.TokenizerResponse.FromString(sock.recv())
        assert resp.encoded.rendered.endswith("<|im_start|>assistant\n") and resp.encoded.token_ids[0] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0, proc.stderr.read()
        assert not (tmp_path / "run" / "tokenizer.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close(0)
        ctx.term()
