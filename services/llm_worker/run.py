"""`run_worker(settings, model)`: one model's worker process.

Its start is arranged so that a cold start (load on demand, issue 12) costs little more than
the model's own load, and costs the workers already serving nothing:
- The load runs at low CPU priority (priority.py); every thread gets its priority back once
  the model is loaded.
- This module imports little at its top (so does the package's __init__), and the token table
  and the modules that only serving needs (zmq, protobuf, the scheduler, llguidance) are read
  and imported on a thread while onnxruntime builds its session, which runs without the GIL.
- llguidance's view of the tokenizer (0.17 s for a 49k vocabulary, all of it holding the GIL,
  so nothing else of the process runs meanwhile) is not built before the worker is ready: it is
  built once the worker has been idle for GRAMMAR_WARM_IDLE_S, or by the first request with a
  grammar if that comes first (LazyGrammar). Requests see the same answers either way.
How long the start took (process start to this entry, then the load) goes into the "model
loaded" log line and into Hello (start_seconds, load_seconds).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable

from npuflow.logs import get_logger
from npuflow.memory import limit_arenas
from npuflow.process import start_process, stop_on_signals

from .priority import lower_priority, restore_priority

if TYPE_CHECKING:
    from npuflow.config import ModelSettings, Settings
    from npuflow.engine.base import Engine
    from npuflow.models.package import ModelPackage

    from .detok import TokenTable
    from .grammar import GrammarMatcher, GrammarVocab
    from .link import WorkerLink

log = get_logger("worker")

GRAMMAR_WARM_IDLE_S = 1.0   # build the grammar vocabulary once no request has run for this long
# What serving needs, imported while the engine builds (see _load).
SERVING_MODULES = ("zmq", "npuflow.llm_worker.link", "npuflow.llm_worker.scheduler")
ENGINE_MODULES = {"cpu": ("onnxruntime", "npuflow.engine.cpu"), "ax": ("npuflow.engine.ax_build",)}
_MAKE = object()            # build_link's default: make the grammar vocabulary itself


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


def build_engine(package: ModelPackage, model: ModelSettings) -> Engine:
    if model.engine == "cpu":
        from npuflow.engine.base import EngineError
        from npuflow.engine.cpu import CpuEngine
        try:
            return CpuEngine(package, max_slots=model.max_batch, context_length=package.context_length,
                             threads=model.threads, kv_cache=model.kv_cache)
        except EngineError as e:
            raise WorkerStartError(f"model '{model.id}': {e}") from None
    if model.engine == "ax":
        from npuflow.engine.ax_build import AX_START_ERRORS, build_ax_engine
        try:
            return build_ax_engine(package, model)
        except AX_START_ERRORS as e:
            raise WorkerStartError(f"model '{model.id}': {e}") from None
    raise WorkerStartError(f"model '{model.id}': unknown engine '{model.engine}' (cpu or ax)")


def is_embedding(package: ModelPackage) -> bool:
    """An embedding model's package (its manifest's "embedding" section)."""
    return isinstance(package.extra.get("embedding"), dict)


def build_embed_engine(package: ModelPackage, model: ModelSettings):
    """An embedding model's engine: the CPU only (the vendor ships no embedding-mode axmodels)."""
    if model.engine != "cpu":
        raise WorkerStartError(f"model '{model.id}': embedding models run on the CPU engine only "
                               f"(engine = \"cpu\"), not engine = \"{model.engine}\"")
    from npuflow.engine.embed import EmbedEngine
    return EmbedEngine(package, threads=model.threads, context_length=package.context_length)


def build_embed_link(engine, package: ModelPackage, model: ModelSettings) -> WorkerLink:
    """The embedding scheduler and the socket loop around a ready embedding engine."""
    from .embedder import EmbedScheduler
    from .link import WorkerInfo, WorkerLink
    scheduler = EmbedScheduler(engine, max_batch=model.max_batch, max_queue=model.max_queue)
    info = WorkerInfo(model=model.id, context_length=engine.context_length, max_batch=model.max_batch,
                      vocab_size=engine.vocab_size, engine="cpu", eos_token_ids=(), created=package.created,
                      embedding=True, embedding_dimensions=engine.dimensions, matryoshka=engine.matryoshka)
    return WorkerLink(scheduler, info, model.endpoint)


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
               vision=None, max_image_pixels: int | None = None, table: TokenTable | None = None,
               grammar: LazyGrammar | None | object = _MAKE) -> WorkerLink:
    """Scheduler and socket loop around a ready engine (tests pass a fake engine here) and the
    package's vision encoder (None: a text model, requests with images are refused). `table`
    and `grammar` (a LazyGrammar, or None: no constrained decoding) when the caller has them
    already (run_worker), else made here."""
    from .detok import load_token_table
    from .link import WorkerInfo, WorkerLink
    from .request import ModelLimits
    from .scheduler import Scheduler
    from .vision import MAX_IMAGE_PIXELS
    if table is None:
        table = load_token_table(package.tokenizer_path, engine.vocab_size)
    limits = ModelLimits(model_id=model.id, vocab_size=engine.vocab_size, context_length=engine.context_length,
                         eos_token_ids=tuple(package.eos_token_ids), sampling_defaults=dict(package.sampling_defaults),
                         grammar=grammar_vocab(package, engine.vocab_size) if grammar is _MAKE else grammar,
                         vision=vision.spec if vision is not None else None)
    scheduler = Scheduler(engine, table, limits, max_queue=model.max_queue, prefix_cache=model.prefix_cache,
                          vision=vision, max_image_pixels=MAX_IMAGE_PIXELS if max_image_pixels is None else max_image_pixels)
    info = WorkerInfo(model=model.id, context_length=engine.context_length, max_batch=engine.max_slots,
                      vocab_size=engine.vocab_size, engine=engine_kind or model.engine,
                      eos_token_ids=tuple(package.eos_token_ids), created=package.created,
                      vision=vision is not None)
    return WorkerLink(scheduler, info, model.endpoint)


def grammar_vocab(package: ModelPackage, vocab_size: int) -> LazyGrammar | None:
    """llguidance's tokenizer for constrained decoding, built when first needed; None when
    llguidance is not installed."""
    from .grammar import available
    if not available():
        log.warning("llguidance is not installed: response_format json and forced tool calls are refused")
        return None
    return LazyGrammar(lambda: _build_grammar_vocab(package, vocab_size))


def _build_grammar_vocab(package: ModelPackage, vocab_size: int) -> GrammarVocab | None:
    from .grammar import GrammarVocab
    try:
        return GrammarVocab(package.tokenizer_path, vocab_size, package.eos_token_ids)
    except Exception as e:
        log.warning("constrained decoding unavailable", error=f"{type(e).__name__}: {e}")
        return None


class LazyGrammar:
    """A GrammarVocab built once, on the first `matcher` call or by `build`, whichever is
    first (the other waits for it). When it cannot be built, requests with a grammar are
    refused as when llguidance is missing (request.build_request's message)."""

    def __init__(self, make: Callable[[], GrammarVocab | None]):
        self._make = make
        self._lock = threading.Lock()
        self._vocab: GrammarVocab | None = None
        self.built = False

    def build(self) -> GrammarVocab | None:
        with self._lock:
            if not self.built:
                self._vocab, self.built = self._make(), True
            return self._vocab

    def matcher(self, grammar: str, param: str) -> GrammarMatcher:
        vocab = self.build()
        if vocab is None:
            from .errors import invalid
            raise invalid("structured output is not available on this worker (llguidance is not installed)",
                          param or "response_format")
        return vocab.matcher(grammar, param)


def build_grammar_when_idle(grammar: LazyGrammar | None, link: WorkerLink,
                            idle_s: float = GRAMMAR_WARM_IDLE_S) -> None:
    """Build `grammar` on a daemon thread once the worker has had no request for idle_s."""
    if grammar is None:
        return

    def run() -> None:
        quiet_since = time.monotonic()
        while not grammar.built:
            if link.scheduler.n_running or link.scheduler.n_waiting:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= idle_s:
                t = time.monotonic()
                grammar.build()
                log.info("grammar vocabulary ready", seconds=round(time.monotonic() - t, 3))
                return
            time.sleep(0.05)

    threading.Thread(target=run, name="grammar-build", daemon=True).start()


class Background:
    """fn() on a daemon thread; `result()` waits for it and returns its value or raises its
    error. Daemon, so a SIGTERM during the load still ends the process at once."""

    def __init__(self, fn: Callable, name: str):
        self._fn, self._value, self._error = fn, None, None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as e:   # handed to result()'s caller
            self._error = e

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _import_quietly(names: tuple[str, ...]) -> None:
    """Import what serving will need; a failure is left for the main thread's own import to
    report (with the context it has)."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            pass


def serve_until_signalled(link: WorkerLink) -> None:
    """Serve until SIGTERM/SIGINT; then finish or end in-flight requests and return."""
    link.serve(stop_on_signals())


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
        package, engine, vision, table = _load(settings, model)
    except Exception as e:
        restore_priority(lowered)
        _serve_start_failure(model, e)
        return
    try:
        if is_embedding(package):
            grammar = None
            link = build_embed_link(engine, package, model)
        else:
            grammar = grammar_vocab(package, engine.vocab_size)
            link = build_link(engine, package, model, vision=vision, table=table, grammar=grammar,
                              max_image_pixels=getattr(settings.server, "max_image_pixels", None))
        load_s = time.monotonic() - entered
        link.info = dataclasses.replace(link.info, start_seconds=round(start_s, 3), load_seconds=round(load_s, 3))
        restored = restore_priority(lowered)
        log.info("model loaded", model=model.id, engine=model.engine, start_s=round(start_s, 3),
                 load_s=round(load_s, 3), low_priority=lowered is not None, threads_restored=restored)
        build_grammar_when_idle(grammar, link)
        serve_until_signalled(link)
    finally:
        if vision is not None:
            vision.close()
        engine.close()
    log.info("stopped", model=model.id)


def _load(settings: Settings, model: ModelSettings):
    """(package, engine, vision encoder or None, token table). The package check (a sha256 of
    the weights, without the GIL) runs alone: a thread holding the GIL beside it would make it
    wait for the GIL after every block. The token table and the imports that only serving needs
    run on a thread while onnxruntime builds its session, which holds the GIL for little."""
    from npuflow.models.resolve import serving_package
    package = serving_package(settings, model)
    if is_embedding(package):
        engine = build_embed_engine(package, model)
        _import_quietly(SERVING_MODULES)
        return package, engine, None, None
    _import_quietly(ENGINE_MODULES.get(model.engine, ()))    # so the session build starts at once
    vocab = getattr(package.dims, "vocab", 0)

    def table_and_imports():
        from .detok import load_token_table
        table = load_token_table(package.tokenizer_path, vocab)
        _import_quietly(SERVING_MODULES)
        return table

    table = Background(table_and_imports, "worker-loader")
    engine = build_engine(package, model)
    try:
        vision = build_vision(package, model)
        table = table.result()
        if engine.vocab_size != vocab:    # an AX graph's own vocabulary size
            from .detok import load_token_table
            table = load_token_table(package.tokenizer_path, engine.vocab_size)
    except BaseException:
        engine.close()
        raise
    return package, engine, vision, table


def _serve_start_failure(model: ModelSettings, e: Exception) -> None:
    """Exit 1 (restarted) for a failure a restart may cure, else serve the failure until stopped."""
    reason = permanent_start_error(model, e)
    if reason is None:
        log.error("cannot start the worker", model=model.id, error=f"{type(e).__name__}: {e}")
        sys.exit(1)
    log.error("model failed to start; serving its failure until stopped", model=model.id, reason=reason)
    from .link import serve_failed
    serve_failed(model.id, model.engine, model.endpoint, reason, stop_on_signals())
    log.info("stopped", model=model.id)
