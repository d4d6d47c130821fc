"""The tokenizer process loads only the preload models at start; any other model (preload = false,
or a package put into models_dir after the start) is loaded on its first load_model or encode."""
import os
import signal
import subprocess
import sys

import zmq

from npuflow.v1 import common_pb2, tokenizer_pb2

from tiny_package import tiny_package
from tok_helpers import CHATML

class Tokenizer:
    """`npuflow tokenizer` on a config, and a DEALER to it."""

    def __init__(self, tmp_path, config: str):
        cfg = tmp_path / "npuflow.toml"
        cfg.write_text(f'[server]\nrun_dir = "{tmp_path}/run"\ncache_dir = "{tmp_path}/cache"\n' + config)
        self.proc = subprocess.Popen([sys.executable, "-m", "npuflow.cli", "tokenizer"],
                                     env={**os.environ, "NPUFLOW_CONFIG": str(cfg)}, stderr=subprocess.PIPE, text=True)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.connect(f"ipc://{tmp_path}/run/tokenizer.sock")

    def ask(self, req: tokenizer_pb2.TokenizerRequest, timeout_ms: int = 10_000) -> tokenizer_pb2.TokenizerResponse:
        self.sock.send(req.SerializeToString())
        assert self.sock.poll(timeout_ms), f"no answer (exit status {self.proc.poll()})"
        return tokenizer_pb2.TokenizerResponse.FromString(self.sock.recv())

    def listed(self) -> dict[str, tokenizer_pb2.TokenizerModel]:
        resp = self.ask(tokenizer_pb2.TokenizerRequest(request_id="m", list_models={}), 20_000)
        return {m.model: m for m in resp.models.models}

    def load(self, model: str) -> tokenizer_pb2.TokenizerResponse:
        return self.ask(tokenizer_pb2.TokenizerRequest(request_id="l", load_model={"model": model}))

    def encode(self, model: str) -> tokenizer_pb2.TokenizerResponse:
        return self.ask(tokenizer_pb2.TokenizerRequest(request_id="e", encode={"model": model, "text": "Hello"}))

    def close(self) -> str:
        """SIGTERM, exit status 0; returns its log."""
        try:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(10) == 0
            return self.proc.stderr.read()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.sock.close(0)
            self.ctx.term()


def test_a_model_not_preloaded_is_loaded_on_first_use(tokenizer_json, tmp_path):
    pkg = tiny_package(tmp_path, tokenizer_json, CHATML)
    tok = Tokenizer(tmp_path, f'[[models]]\nid = "tiny"\nsource = "{pkg}"\n'
                              f'[[models]]\nid = "later"\nsource = "{pkg}"\npreload = false\n'
                              f'[[models]]\nid = "other"\nsource = "{pkg}"\npreload = false\n')
    try:
        assert set(tok.listed()) == {"tiny"}
        assert tok.encode("later").encoded.token_ids == tok.encode("tiny").encoded.token_ids
        loaded = tok.load("other").loaded
        assert loaded.model == "other" and loaded.vocab_size > 0 and not loaded.failed_reason
        assert set(tok.listed()) == {"tiny", "later", "other"}
        assert tok.encode("nope").error.code == common_pb2.ERROR_CODE_NOT_FOUND
    finally:
        log = tok.close()
    assert log.count("tokenizer loaded") == 2, log


def test_load_model_retries_a_model_that_failed_at_start(tokenizer_json, tmp_path):
    """The package of "late" is not there at start (listed failed); once it is, load_model loads it."""
    tok = Tokenizer(tmp_path, f'[[models]]\nid = "late"\nsource = "{tmp_path}/pkg"\n')
    try:
        assert "pkg" in tok.listed()["late"].failed_reason
        assert tok.encode("late").error.code == common_pb2.ERROR_CODE_MODEL_NOT_AVAILABLE
        assert "pkg" in tok.load("late").loaded.failed_reason   # tried again: still not there
        tiny_package(tmp_path, tokenizer_json, CHATML)
        assert tok.encode("late").error.code == common_pb2.ERROR_CODE_MODEL_NOT_AVAILABLE   # remembered
        assert tok.load("late").loaded.vocab_size > 0
        assert tok.encode("late").encoded.token_ids and not tok.listed()["late"].failed_reason
    finally:
        tok.close()


def test_a_package_put_into_models_dir_after_the_start_is_found(tokenizer_json, tmp_path):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    tok = Tokenizer(tmp_path, f'models_dir = "{models_dir}"\n')   # in [server]
    try:
        assert tok.listed() == {}
        assert tok.load("tiny").error.code == common_pb2.ERROR_CODE_NOT_FOUND
        tiny_package(models_dir, tokenizer_json, CHATML)   # models/pkg, id "tiny"
        assert tok.load("tiny").loaded.vocab_size > 0
        assert tok.encode("tiny").encoded.token_ids
    finally:
        tok.close()
