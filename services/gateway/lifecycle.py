"""Which models are loaded: load on demand, idle unload (keep_alive), eviction under the budget.

ModelManager is the gateway's ModelClient (the narrow interface of the OpenAI layer) over the
WorkerPool. Under `npuflow serve` it decides and the supervisor executes (control.proto,
supervisor_link.py): a request for an unloaded model starts its worker and waits for its Hello
(within the request's deadline; concurrent requests share the one load); a model idle for its
keep_alive is unloaded; a load that does not fit the memory budget first unloads the least
recently used idle models, and never one with requests admitted (queued, waiting for it or
running): it waits for one to become idle instead, as long as somebody still waits for the load.
A model that can never fit is refused at once (503 model_too_large_for_budget, with the sizes).

An unload drains: the model takes no new requests (they wait for the reload), its running ones
finish, then its worker stops and its memory counts as free only once the process has exited.
A worker that exits by itself ends its requests (the link's WORKER_LOST) and leaves its model
unloaded: a preloaded model is reloaded at once (with a growing back-off), any other on its next
request. A worker that reports a failed load leaves the model `failed` with the reason (503
model_not_available at once); it is stopped, and tried again by a request only after a back-off
(model_slot.py), or at once by POST /models/load.

Without a supervisor (`npuflow gateway` with workers run by systemd) the models are managed
outside: every configured model has its link from the start, its state is what its worker says,
and load/unload are refused (400 lifecycle_not_managed).
"""
from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import time
from typing import AsyncIterator, Callable

from npuflow.config import ModelSettings, Settings, keep_alive_s
from npuflow.gateway.client import Delta, EmbedParams, Embeddings, GenerateParams, ModelInfo
from npuflow.gateway.errors import ApiError, model_not_available, model_not_found
from npuflow.gateway.lifecycle_metrics import LifecycleMetrics
from npuflow.gateway.model_slot import CRASH_BACKOFF_MAX_S, CRASH_BACKOFF_S, HEALTHY_AFTER_S, ModelSlot, offline_embedding, offline_vision
from npuflow.gateway.worker_link import WorkerPool
from npuflow.logs import get_logger
from npuflow.models.budget import Budget, format_bytes, resolve_budget
from npuflow.models.footprint import Footprint, footprint
from npuflow.v1 import control_pb2

log = get_logger("gateway")
PS = control_pb2.ProcessState

TICK_S = 0.2              # how often idle models are looked at (keep_alive's resolution)
RESCAN_MIN_S = 1.0        # models_dir is scanned again at most this often
ROOM_POLL_S = 0.5         # a load waiting for room looks again at least this often
LOAD_TIMEOUT_S = 3600.0   # a worker that neither says Hello nor exits in this long has failed


def _footprint(model: ModelSettings, cache_dir: str) -> Footprint:
    try:
        return footprint(model, cache_dir)
    except Exception as e:   # a package that cannot be read fails when it loads, with its reason
        log.warning("cannot size model", model=model.id, error=f"{type(e).__name__}: {e}")
        return Footprint(bytes=0, pool="ram", parts={}, estimated=True)


def too_large(slot: ModelSlot, total: int) -> ApiError:
    f = slot.footprint
    parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in f.parts.items() if v)
    what = "NPU memory (CMM)" if f.pool == "cmm" else "memory"
    return ApiError(503, f"The model '{slot.id}' needs {format_bytes(f.bytes)} of {what}"
                         f"{' (' + parts + ')' if parts else ''}{' (estimated)' if f.estimated else ''}, "
                         f"more than the whole memory budget of {format_bytes(total)} for it; raise "
                         f"server.memory_budget, or lower the model's context_length or max_batch.",
                    param="model", code="model_too_large_for_budget")


class ModelManager:
    def __init__(self, settings: Settings, pool: WorkerPool, supervisor=None, tokenizer=None):
        self.settings = settings
        self.pool = pool
        self.supervisor = supervisor          # SupervisorLink, or None: models managed outside
        self.tokenizer = tokenizer
        self.budget: Budget = resolve_budget(settings.server.memory_budget) if supervisor else Budget({})
        self.slots: dict[str, ModelSlot] = {}
        self.metrics = LifecycleMetrics(self)
        self._held: Callable[[str], int] = lambda model: 0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._last_scan = 0.0
        self._sync(settings)

    @property
    def managed(self) -> bool:
        return self.supervisor is not None

    def attach(self, held: Callable[[str], int]) -> None:
        """How many sequences of a model are admitted (the gateway's Admission.held)."""
        self._held = held

    # catalog ------------------------------------------------------------------------------
    def _sync(self, settings: Settings) -> None:
        """Slots for the models of `settings`; a model gone from models_dir loses its slot once
        it is unloaded."""
        self.settings = settings
        ids = set()
        for m in settings.models:
            ids.add(m.id)
            slot = self.slots.get(m.id)
            if slot is None:
                self.slots[m.id] = ModelSlot(m, _footprint(m, settings.server.cache_dir),
                                             keep_alive_s(m, settings.server), vision=offline_vision(m),
                                             embedding=offline_embedding(m),
                                             expected=m.preload or not self.managed)
            elif slot.state in ("unloaded", "failed") and slot.settings != m:
                slot.settings, slot.keep_alive_s = m, keep_alive_s(m, settings.server)
                slot.footprint = _footprint(m, settings.server.cache_dir)
        for mid in [i for i, s in self.slots.items() if i not in ids and s.state == "unloaded"]:
            del self.slots[mid]

    def rescan(self, force: bool = False) -> None:
        """Look at server.models_dir again (at most every RESCAN_MIN_S unless forced)."""
        if not self.settings.server.models_dir or not self.managed:
            return
        now = time.monotonic()
        if not force and now - self._last_scan < RESCAN_MIN_S:
            return
        self._last_scan = now
        try:
            self._sync(self.settings.rescan())
        except Exception as e:
            log.warning("cannot scan models_dir", dir=self.settings.server.models_dir, error=f"{type(e).__name__}: {e}")

    def slot(self, model: str) -> ModelSlot:
        s = self.slots.get(model)
        if s is None:
            self.rescan(force=True)
            s = self.slots.get(model)
        if s is None:
            raise model_not_found(model)
        return s

    def model_settings(self, model: str) -> ModelSettings:
        return self.slot(model).settings

    # start / stop -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.pool.start()
        if not self.managed:
            return
        await self.supervisor.start()
        try:
            running = await self.supervisor.list_workers()
        except Exception as e:
            log.warning("cannot list the supervisor's workers", error=str(e))
            running = {}
        for slot in self.slots.values():
            proc = running.get(slot.id)
            if proc is not None and proc.state in (PS.PROCESS_STATE_RUNNING, PS.PROCESS_STATE_STOPPING):
                slot.state, slot.reserved = "loading", True
                slot.task = asyncio.create_task(self._adopt(slot), name=f"adopt[{slot.id}]")
            elif proc is not None and slot.settings.preload and not proc.requested:
                self._begin_load(slot)     # a preloaded model whose worker exited before we came
            elif proc is None and slot.settings.preload:
                slot.expected = False      # the supervisor left it out: it did not fit the budget
                log.info("preload model not loaded at start (it does not fit the memory budget next to the "
                         "others); it loads on its first request", model=slot.id)
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="model_lifecycle"))

    async def stop(self) -> None:
        for t in self._tasks + [s.task for s in self.slots.values() if s.task is not None]:
            t.cancel()
        await asyncio.gather(*self._tasks, *(s.task for s in self.slots.values() if s.task is not None),
                             return_exceptions=True)
        await self.pool.stop()
        if self.supervisor is not None:
            await self.supervisor.stop()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout))
        except (asyncio.TimeoutError, TimeoutError):
            pass

    # what clients see ---------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        if not self.managed:
            infos = {m.id: m for m in self.pool.models()}
        out = []
        for slot in self.slots.values():
            m = slot.settings
            link = self.pool.links.get(slot.id)
            if not self.managed:
                base = infos.get(slot.id) or link.info()
            elif link is not None and slot.state in ("loaded", "unloading"):
                base = link.info()
            else:
                base = ModelInfo(id=m.id, ready=False, context_length=slot.context_length or m.context_length,
                                 max_batch=slot.max_batch or m.max_batch, created=slot.created,
                                 state=slot.public_state, reason=slot.reason if slot.state == "failed" else "",
                                 vision=slot.vision, embedding=slot.embedding)
            if not base.worker_id and slot.embedding and not base.embedding:   # the package says, until its worker does
                base = dataclasses.replace(base, embedding=True)
            if link is not None and link.hello is not None:   # what its worker said, for when it is unloaded
                slot.created, slot.vision, slot.embedding = base.created, base.vision, base.embedding
                slot.context_length, slot.max_batch = base.context_length, base.max_batch
            out.append(_with_memory(base, slot))
        return out

    # the ModelClient interface ------------------------------------------------------------
    def touch(self, model: str) -> None:
        """A request for `model` arrived: start loading it now (so that it loads while the
        request is tokenized); 404, 503 model_too_large_for_budget or model_not_available at once."""
        slot = self.slot(model)
        slot.last_used = time.monotonic()
        if not self.managed:
            return
        total = self.budget.total(slot.footprint.pool)
        if total is not None and slot.footprint.bytes > total:
            raise too_large(slot, total)
        if slot.state == "failed":
            if time.monotonic() < slot.retry_at:
                raise model_not_available(model, slot.reason)
            self._begin_load(slot)
        elif slot.state == "unloaded":
            self._begin_load(slot)

    async def wait_ready(self, model: str, timeout: float, sequences: int = 1) -> ModelInfo:
        """The model's info once it is loaded, loading it if need be; `sequences` are the
        caller's admitted ones (they do not keep an unload's drain waiting while they wait)."""
        if not self.managed:
            return await self.pool.wait_ready(model, timeout)
        slot = self.slot(model)
        deadline = time.monotonic() + max(0.0, timeout)
        self.touch(model)
        slot.waiters += sequences
        try:
            while True:
                if slot.state == "loaded":
                    link = self.pool.links.get(model)
                    if link is not None and link.ready:
                        slot.last_used = time.monotonic()
                        return link.info()
                    if link is not None:    # a loaded worker that stopped answering: it may come back
                        return await link.wait_ready(deadline - time.monotonic())
                if slot.state == "failed":
                    raise model_not_available(model, slot.reason)
                if slot.state == "unloaded":
                    self.touch(model)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._not_ready(slot)
                await self._wait_change(min(left, ROOM_POLL_S))
        finally:
            slot.waiters -= sequences

    def _not_ready(self, slot: ModelSlot) -> ApiError:
        if slot.state == "loading" and not slot.reserved:
            busy = ", ".join(s.id for s in self._pool_slots(slot.footprint.pool) if s.reserved and s is not slot)
            return ApiError(503, f"The model '{slot.id}' is waiting for memory: the models using the budget "
                                 f"({busy}) are busy; try again later.", code="model_not_ready")
        return ApiError(503, f"The model '{slot.id}' is not ready (it is {slot.state}); try again later.",
                        code="model_not_ready")

    def generate(self, params: GenerateParams) -> AsyncIterator[list[Delta]]:
        return self.pool.generate(params)

    async def embed(self, params: EmbedParams) -> Embeddings:
        return await self.pool.embed(params)

    def abort(self, model: str, request_id: str) -> None:
        self.pool.abort(model, request_id)

    def in_flight(self, model: str) -> int:
        return self.pool.in_flight(model)

    def health(self) -> dict[str, bool]:
        return {m.id: m.status == "loaded" for m in self.models()}

    def stats(self) -> dict[str, dict[str, int]]:
        stats = self.pool.stats()
        return {mid: stats.get(mid, {"in_flight": 0, "queued": 0, "running": 0, "restarts": 0}) for mid in self.slots}

    # explicit control ---------------------------------------------------------------------
    def _require_managed(self) -> None:
        if not self.managed:
            raise ApiError(400, "Models are loaded and unloaded by `npuflow serve`; this gateway runs without its "
                                "supervisor, so its models are managed outside it.", code="lifecycle_not_managed")

    async def load(self, model: str, timeout: float) -> ModelInfo:
        """Load now (a failed model is tried again at once) and wait until loaded."""
        self._require_managed()
        slot = self.slot(model)
        if slot.state == "failed":
            slot.retry_at = 0.0
        slot.explicit += 1
        try:
            await self.wait_ready(model, timeout)
        finally:
            slot.explicit -= 1
        return next(m for m in self.models() if m.id == model)

    async def unload(self, model: str, timeout: float) -> ModelInfo:
        """Drain and unload; returns once its worker has stopped (requests that arrive meanwhile
        wait and load it again)."""
        self._require_managed()
        slot = self.slot(model)
        if slot.state in ("loaded", "loading"):
            if slot.busy_task:
                slot.task.cancel()   # a load in progress is abandoned
                await asyncio.gather(slot.task, return_exceptions=True)
            slot.state = "unloading"
            slot.task = asyncio.create_task(self._unload(slot, "request"), name=f"unload[{model}]")
        if slot.task is not None and slot.state == "unloading":
            await asyncio.wait_for(asyncio.shield(slot.task), timeout)
        return next(m for m in self.models() if m.id == model)

    # loading ------------------------------------------------------------------------------
    def _begin_load(self, slot: ModelSlot) -> None:
        if slot.busy_task:
            return
        slot.state, slot.reason = "loading", ""
        slot.task = asyncio.create_task(self._load(slot), name=f"load[{slot.id}]")
        self._notify()

    def _wanted(self, slot: ModelSlot) -> bool:
        return slot.waiters > 0 or slot.explicit > 0 or self._held(slot.id) > 0 or slot.settings.preload

    async def _load(self, slot: ModelSlot) -> None:
        t0 = time.monotonic()
        try:
            if not await self._make_room(slot):
                slot.state = "unloaded"
                log.info("load given up: nobody waits for it any more", model=slot.id)
                return
            if self.tokenizer is not None and hasattr(self.tokenizer, "load_model"):
                asyncio.create_task(self._load_tokenizer(slot.id))
            link = await self.pool.open(slot.settings)
            await self.supervisor.start_worker(slot.id)
            log.info("loading model", model=slot.id, footprint=format_bytes(slot.footprint.bytes),
                     pool=slot.footprint.pool)
            await _hello(link)   # loaded, or _LoadFailed; an exit event cancels this task
            slot.state, slot.loaded_at, slot.failures, slot.expected = "loaded", time.monotonic(), 0, True
            slot.load_seconds = slot.loaded_at - t0
            slot.last_used = slot.loaded_at
            h = link.hello
            slot.worker_seconds = (h.start_seconds, h.load_seconds) if h is not None else (0.0, 0.0)
            self.metrics.loaded(slot, slot.load_seconds)
            log.info("model loaded", model=slot.id, seconds=round(slot.load_seconds, 2),
                     process_start_s=round(slot.worker_seconds[0], 2), model_load_s=round(slot.worker_seconds[1], 2))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            reason = str(e) if isinstance(e, _LoadFailed) else f"{type(e).__name__}: {e}"
            slot.fail(reason)
            self.metrics.load_failed(slot)
            log.error("model failed to load", model=slot.id, reason=reason)
            await self._stop_worker(slot)
        finally:
            self._notify()

    async def _load_tokenizer(self, model: str) -> None:
        try:
            await self.tokenizer.load_model(model, LOAD_TIMEOUT_S)
        except Exception as e:   # the tokenizer lists it as failed; model_state shows it
            log.warning("tokenizer could not load the model", model=model, error=str(e))

    async def _adopt(self, slot: ModelSlot) -> None:
        """A worker that was running when the gateway started (the supervisor preloaded it, or
        the gateway restarted): loaded at its Hello."""
        link = await self.pool.open(slot.settings)
        try:
            await _hello(link)
            slot.state, slot.loaded_at, slot.last_used = "loaded", time.monotonic(), time.monotonic()
            slot.expected = True
            self.metrics.loaded(slot, None)
        except Exception as e:
            slot.fail(str(e) if isinstance(e, _LoadFailed) else f"{type(e).__name__}: {e}")
            self.metrics.load_failed(slot)
            log.error("model failed to load", model=slot.id, reason=slot.reason)
            await self._stop_worker(slot)
        finally:
            self._notify()

    def _pool_slots(self, pool: str) -> list[ModelSlot]:
        return [s for s in self.slots.values() if s.footprint.pool == pool]

    def _idle(self, s: ModelSlot) -> bool:
        return (s.state == "loaded" and not s.busy_task and self._held(s.id) == 0 and s.waiters == 0
                and self.pool.in_flight(s.id) == 0)

    async def _make_room(self, slot: ModelSlot) -> bool:
        """Reserve the model's footprint, unloading idle models (least recently used first) when
        it does not fit; wait while the models in the way are busy. False when nobody waits for
        the load any more."""
        pool, need = slot.footprint.pool, slot.footprint.bytes
        while True:
            total = self.budget.total(pool)
            used = sum(s.footprint.bytes for s in self._pool_slots(pool) if s.reserved and s is not slot)
            if total is None or used + need <= total:
                slot.reserved = True
                return True
            if need > total:
                raise RuntimeError(too_large(slot, total).message)
            idle = sorted((s for s in self._pool_slots(pool) if s.reserved and self._idle(s)), key=lambda s: s.last_used)
            victims, freed = [], 0
            for s in idle:
                if used - freed + need <= total:
                    break
                victims.append(s)
                freed += s.footprint.bytes
            if victims and used - freed + need <= total:
                for v in victims:
                    log.info("evicting idle model for room", model=v.id, for_model=slot.id,
                             frees=format_bytes(v.footprint.bytes))
                    v.state = "unloading"
                    v.task = asyncio.create_task(self._unload(v, "evicted"), name=f"evict[{v.id}]")
                await asyncio.gather(*(asyncio.shield(v.task) for v in victims), return_exceptions=True)
                continue
            if not self._wanted(slot):
                return False
            await self._wait_change(ROOM_POLL_S)

    # unloading ----------------------------------------------------------------------------
    def _active(self, slot: ModelSlot) -> int:
        """Requests of the model past their wait for it (admitted and not waiting)."""
        return max(self.pool.in_flight(slot.id), self._held(slot.id) - slot.waiters)

    async def _unload(self, slot: ModelSlot, reason: str) -> None:
        try:
            while self._active(slot) > 0:
                await self._wait_change(TICK_S)
            await self._stop_worker(slot)
            slot.state, slot.reserved, slot.reason, slot.expected = "unloaded", False, "", False
            self.metrics.unloaded(slot, reason)
            log.info("model unloaded", model=slot.id, reason=reason, frees=format_bytes(slot.footprint.bytes))
        finally:
            self._notify()

    async def _stop_worker(self, slot: ModelSlot) -> None:
        try:
            await self.supervisor.stop_worker(slot.id)
        except Exception as e:
            log.warning("stopping a worker failed", model=slot.id, error=str(e))
        await self.pool.close(slot.id)

    def on_exit(self, model: str, code: int) -> None:
        """The supervisor saw the model's worker exit without being asked to."""
        slot = self.slots.get(model)
        if slot is None:
            return
        log.warning("worker exited", model=model, code=code, state=slot.state)
        link = self.pool.links.get(model)
        if link is not None:
            link._lost(f"exited (status {code})")
        if slot.state == "loading" and slot.busy_task:
            slot.task.cancel()
            slot.fail(f"its worker exited with status {code} while loading")
            self.metrics.load_failed(slot)
            asyncio.create_task(self.pool.close(model))
        elif slot.state == "unloading":
            pass      # its unload goes on: the stop finds the process gone, the state follows from there
        elif slot.state == "loaded":
            up = time.monotonic() - slot.loaded_at
            slot.crash_backoff = CRASH_BACKOFF_S if up > HEALTHY_AFTER_S else min(slot.crash_backoff * 2,
                                                                                   CRASH_BACKOFF_MAX_S)
            if slot.busy_task:
                slot.task.cancel()
            slot.state, slot.reserved, slot.reason = "unloaded", False, f"its worker exited (status {code})"
            self.metrics.unloaded(slot, "exited")
            asyncio.create_task(self.pool.close(model))
            if slot.settings.preload:
                asyncio.get_running_loop().call_later(slot.crash_backoff, self._reload_preloaded, slot)
        self._notify()

    def _reload_preloaded(self, slot: ModelSlot) -> None:
        if slot.state == "unloaded":
            self._begin_load(slot)

    # idle unload --------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for slot in list(self.slots.values()):
                if slot.state != "loaded":
                    continue
                if not self._idle(slot):
                    slot.last_used = now
                elif now - slot.last_used >= slot.keep_alive_s and not math.isinf(slot.keep_alive_s):
                    slot.state = "unloading"
                    slot.task = asyncio.create_task(self._unload(slot, "keep_alive"), name=f"idle[{slot.id}]")


class _LoadFailed(Exception):
    """The worker said its model cannot load (the message is its one-line reason)."""


async def _hello(link) -> None:
    """Wait for the worker's Hello: return when it loaded, raise _LoadFailed with its reason."""
    try:
        await link.wait_ready(LOAD_TIMEOUT_S)
    except ApiError as e:
        raise _LoadFailed(link.failed or e.message) from None
    if link.failed:
        raise _LoadFailed(link.failed)


def _with_memory(m: ModelInfo, slot: ModelSlot) -> ModelInfo:
    import dataclasses
    f = slot.footprint
    return dataclasses.replace(m, footprint_bytes=f.bytes, memory_pool=f.pool, footprint_estimated=f.estimated,
                               keep_alive_s=slot.keep_alive_public(), required=slot.expected,
                               last_load=(slot.load_seconds, *slot.worker_seconds) if slot.load_seconds else None)


def supervised() -> bool:
    """Whether this gateway runs under `npuflow serve` (which owns the worker processes)."""
    return os.environ.get("NPUFLOW_SUPERVISED") == "1" and bool(os.environ.get("NPUFLOW_CONTROL_ENDPOINT"))
