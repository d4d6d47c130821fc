"""`run_tokenizer(settings)`: the tokenizer service process.

At start it loads the tokenizers of the preload models only (what the supervisor starts workers
for); any other model's tokenizer is loaded on first use by `loader(settings)`, which looks the
model up in freshly rescanned settings, so a package added to models_dir since the start is found.
"""
from __future__ import annotations

import signal
import sys

from npuflow.config import ModelSettings, Settings
from npuflow.logs import get_logger
from npuflow.models.resolve import serving_package
from npuflow.process import start_process, stop_on_signals

from .encoder import ModelTokenizer
from .loading import Loader, UnknownModel, failure_reason
from .service import TokenizerService

log = get_logger("tokenizer")


def preloaded(settings: Settings) -> list[ModelSettings]:
    """The models loaded at start (`preload` defaults to true for [[models]] entries, so a config
    without it keeps today's behaviour; models found in models_dir are not preloaded)."""
    return [m for m in settings.models if m.preload]


def loader(settings: Settings) -> Loader:
    """model id -> its ModelTokenizer, for a model not loaded at start; UnknownModel for an id the
    settings, rescanned now (cheap: a directory listing and small json reads), do not have."""
    def load(model_id: str) -> ModelTokenizer:
        current = settings.rescan()
        model = next((m for m in current.models if m.id == model_id), None)
        if model is None:
            raise UnknownModel(model_id)
        return ModelTokenizer.from_package(serving_package(current, model))
    return load


def load_tokenizers(settings: Settings) -> tuple[dict[str, ModelTokenizer], dict[str, str]]:
    """Each preload model's tokenizer, and the ones that cannot be loaded with the reason (one log
    line each; they are reported, retried only on an explicit load_model, and the others are
    served). A failed download may heal: it exits (status 1) so that the tokenizer is started again."""
    from npuflow.models.default import DownloadError
    models, failed = {}, {}
    for m in preloaded(settings):
        try:
            models[m.id] = ModelTokenizer.from_package(serving_package(settings, m))
        except DownloadError as e:
            log.error("cannot load tokenizers", model=m.id, error=f"{type(e).__name__}: {e}")
            sys.exit(1)
        except Exception as e:
            failed[m.id] = failure_reason(e)
            log.error("tokenizer of a model failed to load; serving the others", model=m.id, reason=failed[m.id])
    return models, failed


def _exit_on_signal(*_) -> None:
    raise SystemExit(0)  # while loading: stop at once (cleanup in finally blocks still runs)


def run_tokenizer(settings: Settings) -> None:
    start_process("tokenizer", settings.server.log_level)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    models, failed = load_tokenizers(settings)
    TokenizerService(models, failed, loader(settings)).serve(settings.tokenizer.endpoint, stop_on_signals())
    log.info("stopped")
