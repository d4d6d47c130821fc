"""Which models' tokenizers are loaded, which failed and why, and loading one on first use, once.

The service starts with the tokenizers of the preload models; any other model's tokenizer is
loaded when it is first asked for (a `load_model` request, sent by the gateway when it starts the
model's worker, or an encode or decode of it). `loader(model_id)` does the work:
- it raises UnknownModel for an id the settings do not know: answered NOT_FOUND, and not
  remembered, because the model may appear in models_dir later;
- any other exception means the model cannot load: remembered with its reason (listed as failed,
  its requests answered MODEL_NOT_AVAILABLE at once rather than loading again on every request),
  until an explicit `load_model` asks for another try (retry=True).

Thread-safe: the encode threads, the load threads and the I/O loop (listing, the 0.5 s liveness
probe) use it at once. A load runs outside the lock, so listing never waits for one, and
concurrent callers for one model wait for the one load instead of starting their own.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from npuflow.logs import get_logger
from npuflow.v1 import common_pb2

from .encoder import ModelTokenizer, TokenizeError

log = get_logger("tokenizer")


class UnknownModel(LookupError):
    """Raised by a loader for a model id that is not in the (rescanned) settings."""


Loader = Callable[[str], ModelTokenizer]


def not_available(model_id: str, reason: str) -> TokenizeError:
    return TokenizeError(common_pb2.ERROR_CODE_MODEL_NOT_AVAILABLE,
                         f"The model '{model_id}' is not available: its tokenizer could not be loaded ({reason})",
                         "model")


def not_found(model_id: str) -> TokenizeError:
    return TokenizeError(common_pb2.ERROR_CODE_NOT_FOUND, f"model '{model_id}' does not exist", "model")


def failure_reason(e: BaseException) -> str:
    """One line: it is listed to the gateway and shown to clients in a 503."""
    return " ".join(str(e).split()) or type(e).__name__


@dataclass
class _Load:
    """One load in flight; the callers that asked for the same model wait on `done`."""
    done: threading.Event = field(default_factory=threading.Event)


class Tokenizers:
    def __init__(self, models: Mapping[str, ModelTokenizer], failed: Mapping[str, str] | None = None,
                 loader: Loader | None = None):
        self._lock = threading.Lock()
        self._models = dict(models)
        self._failed = dict(failed or {})   # model id -> why its tokenizer could not be loaded
        self._loads: dict[str, _Load] = {}
        self.loader = loader

    def snapshot(self) -> tuple[dict[str, ModelTokenizer], dict[str, str]]:
        """Copies of (loaded, failed): what list_models reports."""
        with self._lock:
            return dict(self._models), dict(self._failed)

    def loaded(self, model_id: str) -> ModelTokenizer | None:
        return self._models.get(model_id)

    def failure(self, model_id: str) -> str | None:
        """Why the model's tokenizer could not be loaded; None when it has not failed."""
        return self._failed.get(model_id)

    def settled(self, model_id: str) -> bool:
        """A request for the model is answered without loading anything: it is loaded, it failed
        (and no retry runs), or there is no loader (an unknown id is NOT_FOUND at once)."""
        with self._lock:
            return (self.loader is None or model_id in self._models
                    or (model_id in self._failed and model_id not in self._loads))

    def get(self, model_id: str, load: bool = True) -> ModelTokenizer:
        """The model's tokenizer, loaded first when needed (unless not `load`); TokenizeError
        MODEL_NOT_AVAILABLE (it failed, now or before) or NOT_FOUND (no such model, or not loaded)."""
        tok = self._models.get(model_id)
        if tok is not None:
            return tok
        return self.load(model_id) if load else self._result(model_id)

    def load(self, model_id: str, retry: bool = False) -> ModelTokenizer:
        """Load the model's tokenizer unless it is loaded, or join the load already running. A
        remembered failure is raised again, unless `retry` (an explicit load_model) asks for one
        more try."""
        with self._lock:
            tok = self._models.get(model_id)
            if tok is not None:
                return tok
            pending = self._loads.get(model_id)
            mine = pending is None
            if mine:
                if model_id in self._failed and not retry:
                    raise not_available(model_id, self._failed[model_id])
                if self.loader is None:
                    raise not_found(model_id)
                pending = self._loads[model_id] = _Load()
        if mine:
            self._run(model_id, pending)
        else:
            pending.done.wait()
        return self._result(model_id)

    def _result(self, model_id: str) -> ModelTokenizer:
        with self._lock:
            tok = self._models.get(model_id)
            if tok is not None:
                return tok
            if model_id in self._failed:
                raise not_available(model_id, self._failed[model_id])
        raise not_found(model_id)

    def _run(self, model_id: str, pending: _Load) -> None:
        t0 = time.monotonic()
        log.info("loading tokenizer", model=model_id)
        tok, reason = None, None
        try:
            tok = self.loader(model_id)
        except UnknownModel:
            log.info("no such model in the settings", model=model_id)
        except Exception as e:
            reason = failure_reason(e)
            log.error("tokenizer of a model failed to load; serving the others", model=model_id, reason=reason)
        else:
            log.info("tokenizer loaded", model=model_id, vocab_size=tok.vocab_size,
                     seconds=round(time.monotonic() - t0, 3))
        finally:
            with self._lock:
                if tok is not None:
                    self._models[model_id] = tok
                    self._failed.pop(model_id, None)
                elif reason is not None:
                    self._failed[model_id] = reason
                else:   # unknown now (or the loader was interrupted): nothing to remember
                    self._failed.pop(model_id, None)
                del self._loads[model_id]
            pending.done.set()
