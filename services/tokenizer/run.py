"""`run_tokenizer(settings)`: the tokenizer service process."""
from __future__ import annotations

import signal
import sys
import threading

from npuflow.config import ModelSettings, Settings
from npuflow.logs import get_logger
from npuflow.models.package import ModelPackage
from npuflow.process import start_process

from .encoder import ModelTokenizer
from .service import TokenizerService

log = get_logger("tokenizer")


def load_package(settings: Settings, model: ModelSettings) -> ModelPackage:
    """The model's package with the serving config applied (the same view the worker has)."""
    from npuflow.models.resolve import resolve_model
    package = resolve_model(model.source, settings.server.cache_dir, model.id)
    return package.with_overrides(id=model.id, context_length=model.context_length,
                                  sampling_defaults=dict(model.sampling))


def _exit_on_signal(*_) -> None:
    raise SystemExit(0)  # while loading: stop at once (cleanup in finally blocks still runs)


def run_tokenizer(settings: Settings) -> None:
    start_process("tokenizer", settings.server.log_level)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        models = {m.id: ModelTokenizer.from_package(load_package(settings, m)) for m in settings.models}
    except Exception as e:
        log.error("cannot load tokenizers", error=f"{type(e).__name__}: {e}")
        sys.exit(1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    TokenizerService(models).serve(settings.tokenizer.endpoint, stop)
    log.info("stopped")
