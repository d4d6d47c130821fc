"""Grammar-constrained decoding with llguidance: a token mask per step, one matcher per choice.

The worker builds one `GrammarVocab` from the package's tokenizer.json at start (about 0.2 s for
a 49k vocabulary); a request with a grammar gets one `GrammarMatcher` per choice. Each step the
matcher computes the set of tokens that keep the output inside the grammar (tens of
microseconds for JSON schemas, measured in tests/llm_worker/test_worker_grammar.py); the
sampler sets every other logit to -inf. A matcher whose grammar is complete reports `done`, and
the choice ends there with finish reason STOP.

llguidance is optional at run time: without it, requests with a grammar are refused with
INVALID_ARGUMENT and everything else works.
"""
from __future__ import annotations

import pathlib
from collections import OrderedDict
from typing import Sequence

import numpy as np

from .errors import invalid

try:
    import llguidance as _llg
except ImportError:  # pragma: no cover - exercised only where llguidance is not installed
    _llg = None

CACHED_GRAMMARS = 32   # compiled grammars kept (least recently used dropped): memory stays bounded


def available() -> bool:
    return _llg is not None


class GrammarVocab:
    """llguidance's view of the model's tokenizer, shared by every matcher of this worker."""

    def __init__(self, tokenizer_json: str | pathlib.Path, vocab_size: int, eos_token_ids: Sequence[int]):
        if _llg is None:
            raise RuntimeError("llguidance is not installed")
        text = pathlib.Path(tokenizer_json).read_text(encoding="utf-8")
        self.tokenizer = _llg.LLTokenizer(text, n_vocab=vocab_size, eos_token=list(eos_token_ids) or None)
        self.vocab_size = vocab_size
        self._words = (vocab_size + 31) // 32
        self._compiled: OrderedDict[str, object] = OrderedDict()   # grammar text -> unused LLMatcher

    def matcher(self, grammar: str, param: str) -> "GrammarMatcher":
        """A fresh matcher; RequestError(INVALID_ARGUMENT, param) when the grammar is not valid.
        A grammar is compiled once while it is among the CACHED_GRAMMARS most recently used
        (the choices of an n>1 request, a schema sent again); each matcher is a copy of it."""
        proto = self._compiled.pop(grammar, None)
        if proto is None:
            err = _llg.LLMatcher.validate_grammar(grammar, self.tokenizer)
            if err:
                raise invalid(f"invalid {param}: {_one_line(err)}", param)
            proto = _llg.LLMatcher(self.tokenizer, grammar, log_level=0)
            if proto.is_error():
                raise invalid(f"invalid {param}: {_one_line(proto.get_error())}", param)
            while len(self._compiled) >= CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        self._compiled[grammar] = proto
        return GrammarMatcher(proto.deep_copy(), self.vocab_size, self._words, param)


class GrammarMatcher:
    def __init__(self, matcher, vocab_size: int, words: int, param: str = "response_format"):
        self._m = matcher
        self.param = param   # the request field the grammar came from
        self._v = vocab_size
        self._mask = np.full(words, -1, dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """bool[vocab]: the tokens the grammar allows next."""
        self._m.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        return np.unpackbits(self._mask.view(np.uint8), bitorder="little")[:self._v].astype(bool)

    def apply(self, row: np.ndarray) -> None:
        """Set the logits of disallowed tokens to -inf, in place."""
        ok = self.allowed()
        if ok.any():  # nothing allowed means the matcher failed; consume() then ends the choice
            row[~ok] = -np.inf

    def consume(self, token: int) -> bool:
        return bool(self._m.consume_token(token))

    @property
    def done(self) -> bool:
        """The grammar cannot be extended any more (the output is complete)."""
        return bool(self._m.is_stopped())

    @property
    def error(self) -> str:
        """Why the matcher failed, in one line ("" while it has not)."""
        return _one_line(self._m.get_error()) if self._m.is_error() else ""


def _one_line(text: str) -> str:
    """llguidance's error text, cut to its first line: after it come the parser's state and the
    grammar, which are no client's business."""
    line = text.strip().split("\n", 1)[0].strip()
    if line == "NoExtensionBias":
        return "no token can continue the output (the schema admits no complete value here)"
    return line if len(line) <= 300 else line[:297] + "..."

