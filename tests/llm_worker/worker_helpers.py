"""A tiny byte-level BPE tokenizer, a model package around it and a deterministic fake Engine."""
from __future__ import annotations

import pathlib
import time
from typing import Sequence

import numpy as np
import zmq
from tokenizers import Tokenizer

from bpe_tokenizer import build_bpe_tokenizer
from npuflow.engine.base import EngineError
from npuflow.models.package import Dims, ModelPackage
from npuflow.v1 import worker_pb2

EOS = 2
CORPUS = ["Hello, world! How are you?", "The quick brown fox jumps over the lazy dog.",
          "héllo wörld, naïve café", "日本語のテキスト", "emoji 😀 🚀 ok"] * 20


def build_tokenizer(path: pathlib.Path) -> Tokenizer:
    return build_bpe_tokenizer(path, CORPUS, vocab_size=320)


def make_package(tokenizer_json: pathlib.Path, *, context_length: int = 64, sampling_defaults=None) -> ModelPackage:
    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
    return ModelPackage(path=tokenizer_json.parent, id="tiny", architecture="llama", engine="cpu",
                        dims=Dims(hidden=8, layers=1, heads=1, kv_heads=1, head_dim=8, ffn=8, vocab=vocab),
                        context_length=context_length, eos_token_ids=(EOS,), bos_token_id=None,
                        chat_template="", files={"tokenizer": tokenizer_json.name},
                        sampling_defaults=dict(sampling_defaults or {}), created=1700000000)


class FakeEngine:
    """Logits favour (last token + 1) % vocab, then +2, +3, ... (a smooth, batch-independent ramp)."""

    def __init__(self, vocab_size: int, *, max_slots: int = 4, context_length: int = 64,
                 prefill_s_per_token: float = 0.0, decode_s: float = 0.0, fail_token: int | None = None):
        self.vocab_size = vocab_size
        self.max_slots = max_slots
        self.prefill_align = 1
        self.context_length = context_length
        self.prefill_s_per_token = prefill_s_per_token
        self.decode_s = decode_s
        self.fail_token = fail_token
        self.seqs: list[list[int]] = [[] for _ in range(max_slots)]
        self.calls: list[tuple] = []
        self.closed = False

    def logits_after(self, last: int) -> np.ndarray:
        v = self.vocab_size
        return (-0.5 * ((np.arange(v) - last - 1) % v)).astype(np.float32)

    def _check(self, slot: int, ids: Sequence[int]) -> None:
        if not ids:
            raise EngineError("empty prefill")
        if any(t < 0 or t >= self.vocab_size for t in ids):
            raise EngineError("token id outside the vocabulary")
        if self.fail_token is not None and self.fail_token in ids:
            raise EngineError(f"fake failure on token {self.fail_token}")
        if len(self.seqs[slot]) + len(ids) > self.context_length:
            raise EngineError(f"slot {slot} is full")

    def prefill(self, slot: int, token_ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        self._check(slot, token_ids)
        self.calls.append(("prefill", slot, len(token_ids)))
        if self.prefill_s_per_token:
            time.sleep(self.prefill_s_per_token * len(token_ids))
        self.seqs[slot].extend(token_ids)
        if all_logits:
            return np.stack([self.logits_after(t) for t in token_ids])
        return self.logits_after(token_ids[-1])

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        for s, t in zip(slots, token_ids):
            self._check(s, [t])
        self.calls.append(("decode", tuple(slots)))
        if self.decode_s:
            time.sleep(self.decode_s)
        for s, t in zip(slots, token_ids):
            self.seqs[s].append(t)
        return np.stack([self.logits_after(t) for t in token_ids])

    def release(self, slot: int) -> None:
        self.seqs[slot] = []

    def truncate(self, slot: int, length: int) -> None:
        assert 0 <= length <= len(self.seqs[slot])
        self.calls.append(("truncate", slot, length))
        del self.seqs[slot][length:]

    def length(self, slot: int) -> int:
        return len(self.seqs[slot])

    def close(self) -> None:
        self.closed = True


class WorkerPeer:
    """The gateway's side of a worker socket in tests: one DEALER, protobuf frames."""
    recv_timeout = 5.0

    def __init__(self, endpoint):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.connect(endpoint)

    def send(self, **kind):
        self.sock.send(worker_pb2.ToWorker(**kind).SerializeToString())

    def recv(self, timeout: float | None = None) -> worker_pb2.FromWorker:
        wait = self.recv_timeout if timeout is None else timeout
        assert self.sock.poll(int(wait * 1000)), "no answer from the worker"
        return worker_pb2.FromWorker.FromString(self.sock.recv())

    def close(self):
        self.sock.close(0)
        self.ctx.term()
