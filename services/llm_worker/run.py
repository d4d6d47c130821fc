"""`run_worker(settings, model)`: one model's worker process.

The model loads at low CPU priority (priority.py), so that the workers already serving keep
their speed; every thread gets its priority back once the model is loaded. How long the start
took (process start to this entry, then the load) goes into the "model loaded" log line and
into Hello (start_seconds, load_seconds).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time

from npuflow.config import ModelSettings, Settings
from npuflow.engine.base import Engine
from npuflow.logs import get_logger
from npuflow.models.package import ModelPackage
from npuflow.process import start_process

from .detok import load_token_table
from .grammar import GrammarVocab
from .grammar import available as grammar_available
from .link import WorkerInfo, WorkerLink, serve_failed
from npuflow.memory import limit_arenas
from .priority import lower_priority, restore_priority
from .request import ModelLimits
from .scheduler import Scheduler
from .vision import MAX_IMAGE_PIXELS

log = get_logger("worker")


class WorkerStartError(Exception):
    """The worker cannot start (model, engine) and a restart would not change that; the message
    is one line."""


def permanent_start_error(model: ModelSettings, e: BaseException) -> str | None:
    """The one-line reason when `e`, raised while loading the model, is a failure that cannot
    heal by restarting (bad source or package, missing runtime, NPU memory, settings); None for
    the others (a crash, a failed download), which exit and are restarted."""
    from npuflow.config import ConfigError
    from npuflow.models.package import PackageError
    if not isinstance(e, (WorkerStartError, PackageError, ConfigError, ImportError)):
        return None
    reason = " ".join(str(e).split()) or type(e).__name__
    prefix = f"model '{model.id}': "
    return reason[len(prefix):] if reason.startswith(prefix) else reason


def load_package(settings: Settings, model: ModelSettings) -> ModelPackage:
    from npuflow.models.resolve import resolve_model
    package = resolve_model(model.source, settings.server.cache_dir, model.id)
    return package.with_overrides(id=model.id, context_length=model.context_length,
                                  sampling_defaults=dict(model.sampling))


def build_engine(package: ModelPackage, model: ModelSettings) -> Engine:
    if model.engine == "cpu":
        from npuflow.engine.cpu import CpuEngine
        return CpuEngine(package, max_slots=model.max_batch, context_length=package.context_length,
                         threads=model.threads)
    if model.engine == "ax":
        from npuflow.engine.ax_build import AX_START_ERRORS, build_ax_engine
        try:
            return build_ax_engine(package, model)
        except AX_START_ERRORS as e:
            raise WorkerStartError(f"model '{model.id}': {e}") from None
    raise WorkerStartError(f"model '{model.id}': unknown engine '{model.engine}' (cpu or ax)")


def build_vision(package: ModelPackage, model: ModelSettings):
    """The package's vision encoder, or None for a text-only package."""
    if "vision" not in package.extra:
        return None
    if model.engine == "ax":                # the LLM graphs' provider, card and simulated timing
        from npuflow.engine.ax_build import AX_START_ERRORS, build_ax_vision
        try:
            return build_ax_vision(package, model)
        except AX_START_ERRORS as e:
            raise WorkerStartError(f"model '{model.id}': {e}") from None
    from npuflow.engine.vision import open_vision_encoder
    return open_vision_encoder(package, threads=model.threads)


def build_link(engine: Engine, package: ModelPackage, model: ModelSettings, engine_kind: str = "", *,
               vision=None, max_image_pixels: int = MAX_IMAGE_PIXELS) -> WorkerLink:
    """Scheduler and socket loop around a ready engine (tests pass a fake engine here) and the
    package's vision encoder (None: a text model, requests with images are refused)."""
    table = load_token_table(package.tokenizer_path, engine.vocab_size)
    limits = ModelLimits(model_id=model.id, vocab_size=engine.vocab_size, context_length=engine.context_length,
                         eos_token_ids=tuple(package.eos_token_ids), sampling_defaults=dict(package.sampling_defaults),
                         grammar=_grammar_vocab(package, engine.vocab_size),
                         vision=vision.spec if vision is not None else None)
    scheduler = Scheduler(engine, table, limits, max_queue=model.max_queue, prefix_cache=model.prefix_cache,
                          vision=vision, max_image_pixels=max_image_pixels)
    info = WorkerInfo(model=model.id, context_length=engine.context_length, max_batch=engine.max_slots,
                      vocab_size=engine.vocab_size, engine=engine_kind or model.engine,
                      eos_token_ids=tuple(package.eos_token_ids), created=package.created,
                      vision=vision is not None)
    return WorkerLink(scheduler, info, model.endpoint)


def _grammar_vocab(package: ModelPackage, vocab_size: int) -> GrammarVocab | None:
    """llguidance's tokenizer for constrained decoding, or None (no llguidance, odd tokenizer)."""
    if not grammar_available():
        log.warning("llguidance is not installed: response_format json and forced tool calls are refused")
        return None
    try:
        return GrammarVocab(package.tokenizer_path, vocab_size, package.eos_token_ids)
    except Exception as e:
        log.warning("constrained decoding unavailable", error=f"{type(e).__name__}: {e}")
        return None


def serve_until_signalled(link: WorkerLink) -> None:
    """Serve until SIGTERM/SIGINT; then finish or end in-flight requests and return."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    link.serve(stop)


def _exit_on_signal(*_) -> None:
    raise SystemExit(0)  # while loading: stop at once (cleanup in finally blocks still runs)


def process_age() -> float:
    """Seconds since this process started (Linux: /proc/self/stat's start time, in clock ticks
    since boot, so to 10 ms at the usual 100 Hz); 0.0 where that cannot be read."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def run_worker(settings: Settings, model: ModelSettings) -> None:
    entered = time.monotonic()
    start_s = process_age()
    start_process("worker", settings.server.log_level, detail=model.id)
    limit_arenas()   # before onnxruntime's threads exist
    signal.signal(signal.SIGTERM, _exit_on_signal)
    lowered = lower_priority()
    try:
        package = load_package(settings, model)
        engine = build_engine(package, model)
        try:
            vision = build_vision(package, model)
        except BaseException:
            engine.close()
            raise
    except Exception as e:
        restore_priority(lowered)
        reason = permanent_start_error(model, e)
        if reason is None:
            log.error("cannot start the worker", model=model.id, error=f"{type(e).__name__}: {e}")
            sys.exit(1)
        log.error("model failed to start; serving its failure until stopped", model=model.id, reason=reason)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        serve_failed(model.id, model.engine, model.endpoint, reason, stop)
        log.info("stopped", model=model.id)
        return
    try:
        link = build_link(engine, package, model, vision=vision,
                          max_image_pixels=getattr(settings.server, "max_image_pixels", MAX_IMAGE_PIXELS))
        load_s = time.monotonic() - entered
        link.info = dataclasses.replace(link.info, start_seconds=round(start_s, 3), load_seconds=round(load_s, 3))
        restored = restore_priority(lowered)
        log.info("model loaded", model=model.id, engine=model.engine, start_s=round(start_s, 3),
                 load_s=round(load_s, 3), low_priority=lowered is not None, threads_restored=restored)
        serve_until_signalled(link)
    finally:
        if vision is not None:
            vision.close()
        engine.close()
    log.info("stopped", model=model.id)
