"""Continuous batching over the engine's KV slots.

One `step()`:
  1. end requests whose deadline passed;
  2. admit waiting choices into free slots (FIFO; each choice of an n>1 request is its own
     sequence in its own slot, sharing nothing);
  3. decode every running choice that has a sampled token, in ONE engine.decode call;
  4. prefill newcomers in chunks, within a token budget sized from the measured prefill speed so
     the chunk takes about `step_target_s` while other sequences are decoding (their next token
     waits for it) or `idle_target_s` when none are (bigger chunks prefill faster); the socket is
     polled between steps, so pings are answered during a long prefill; a choice whose prompt is
     complete gets its first token;
  5. sample all rows from 3 and 4 together, and return one TokenEvent per choice that progressed.
Aborts and submit errors are answered by the next step (or `take_events`).

A request with images first goes to the encode thread (vision.py) and joins `waiting` when its
embeddings are ready (`_collect_encoded`, before step 1); its prefill pieces carry the
embeddings of the image positions they hold. Prefix reuse compares the requests' keys, in which
image positions name their image.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Iterable

import numpy as np

from npuflow.engine.base import Engine
from npuflow.logs import get_logger
from npuflow.v1 import common_pb2, worker_pb2

from .detok import TokenTable
from .errors import RequestError
from .request import MAX_CHOICES, Choice, ModelLimits, Request, build_request
from .sampling import sample_batch
from .vision import MAX_IMAGE_PIXELS, EncodeThread

log = get_logger("worker")

Event = tuple[bytes, worker_pb2.TokenEvent]  # (peer identity, event)


class PrefillBudget:
    """Tokens of prompt to prefill in one step, from the engine's measured prefill speed. Before
    the first measurement a typical prompt (up to `start` tokens) goes in one call, since every
    extra chunk adds its own fixed cost to the time to first token."""

    def __init__(self, lo: int = 16, hi: int = 512, start: int = 256):
        self.lo, self.hi = lo, hi
        self.start = start
        self._rate: float | None = None  # tokens per second, smoothed

    def tokens(self, target_s: float) -> int:
        if self._rate is None:
            return self.start
        return int(min(self.hi, max(self.lo, self._rate * target_s)))

    def record(self, tokens: int, seconds: float) -> None:
        if tokens < 8 or seconds <= 0:
            return
        rate = tokens / seconds
        self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate


MIN_PREFILL = 2   # prompt tokens a reused slot still prefills (see Scheduler._take_slot)


class Scheduler:
    def __init__(self, engine: Engine, table: TokenTable, limits: ModelLimits, *, max_queue: int,
                 step_target_s: float = 0.15, idle_target_s: float = 0.4, prefix_cache: bool = True,
                 vision=None, max_image_pixels: int = MAX_IMAGE_PIXELS):
        self.engine = engine
        self.table = table
        self.limits = limits
        self.max_queue = max_queue
        self.step_target_s = step_target_s  # prefill time per step while others are decoding
        self.idle_target_s = idle_target_s  # ... and while nobody waits for a token
        self.budget = PrefillBudget()
        # the engine's prefill granularity: the AX engine runs chunks of its prefill length, so
        # a piece that ends inside one costs the whole chunk, and the next piece runs it again
        self.align = max(1, int(getattr(engine, "prefill_align", 1) or 1))
        self.free_slots = list(range(engine.max_slots))   # least recently used first
        self.prefix_cache = prefix_cache
        self.held: dict[int, list[int]] = {}   # free slot -> prompt keys its KV still holds
        self.vision = vision                  # a VisionEncoder, or None (images are refused)
        # built now (its imports), started with the first image
        self._encoder = EncodeThread(vision, max_pixels=max_image_pixels, wake=lambda: self.wake()) \
            if vision is not None else None
        self.encoding: dict[str, Request] = {}  # requests whose images are being encoded
        self.wake = lambda: None              # called from the encode thread when a request is ready
        self.waiting: deque[Choice] = deque()
        self.running: list[Choice] = []
        self.requests: dict[str, Request] = {}
        self._touched: list[Choice] = []  # finished outside a step (abort, errors)
        self._outbox: list[Event] = []

    # ---- inputs -------------------------------------------------------------------------
    def submit(self, msg: worker_pb2.GenerateRequest, peer: bytes) -> None:
        try:
            if msg.request_id in self.requests:
                raise RequestError(common_pb2.ERROR_CODE_INVALID_ARGUMENT,
                                   f"request {msg.request_id} is already running", "request_id")
            # a safety net sized as the gateway's admission (gateway/admission.py), which counts
            # its sequences until after their Abort: it never fires for a request admitted there
            held, n = len(self.waiting) + len(self.running) + self.n_encoding, min(max(1, msg.n), MAX_CHOICES)
            if held and held + n > self.capacity:
                raise RequestError(common_pb2.ERROR_CODE_OVERLOADED,
                                   f"the model's queue is full ({held} sequences in flight, room for "
                                   f"{self.capacity})")
            req = build_request(msg, peer, self.limits, self.table)
        except RequestError as e:
            self.submit_rejected(msg, peer, e.to_proto())
            return
        self.requests[req.id] = req
        if req.images is None:
            self.waiting.extend(req.choices)
            return
        self.encoding[req.id] = req
        self._encoder.submit(req)

    def submit_rejected(self, msg: worker_pb2.GenerateRequest, peer: bytes, error: common_pb2.Error) -> None:
        """Answer a request that will not run: one ERROR event per choice the gateway waits for."""
        n = min(max(1, msg.n), MAX_CHOICES)
        self._outbox.extend((peer, _error_event(msg.request_id, i, error, len(msg.prompt_token_ids)))
                            for i in range(n))

    def abort(self, request_id: str, reason: int = common_pb2.FINISH_REASON_ABORT,
              error: common_pb2.Error | None = None) -> None:
        req = self.requests.get(request_id)
        if req is None:
            return  # already finished (its last event went out) or never known
        for c in req.choices:
            self._end(c, reason, error)

    def abort_all(self, reason: int, error: common_pb2.Error | None = None) -> None:
        for rid in list(self.requests):
            self.abort(rid, reason, error)

    # ---- state --------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        """Something for `step` to do now (a request still being encoded is not: the encode
        thread calls `wake` when it is ready)."""
        return bool(self.waiting or self.running or self._touched or self._outbox
                    or (self._encoder is not None and not self._encoder.done.empty()))

    @property
    def capacity(self) -> int:
        """Sequences (choices) in flight at most: the batch plus max_queue waiting."""
        return self.engine.max_slots + self.max_queue

    @property
    def n_running(self) -> int:
        return len(self.running)

    @property
    def n_waiting(self) -> int:
        return len(self.waiting) + self.n_encoding

    @property
    def n_encoding(self) -> int:
        """Choices of requests whose images are being encoded."""
        return sum(len(r.choices) for r in self.encoding.values())

    def close(self) -> None:
        """Stop the encode thread (requests still encoding should have been ended first)."""
        if self._encoder is not None:
            self._encoder.stop()

    # ---- the step -----------------------------------------------------------------------
    def step(self) -> list[Event]:
        self._collect_encoded()
        self._expire(int(time.time() * 1000))
        self._admit()
        rows: list[tuple[Choice, np.ndarray]] = []
        self._decode(rows)
        self._prefill(rows, self.step_target_s if rows else self.idle_target_s)
        if rows:
            logits = rows[0][1][None] if len(rows) == 1 else np.stack([r for _, r in rows])
            picks = sample_batch(logits, [c.sampler for c, _ in rows])
            for (c, _), pick in zip(rows, picks):
                c.accept(pick)
                if c.finished:
                    self._release(c)
        return self.take_events([c for c, _ in rows])

    def take_events(self, progressed: Iterable[Choice] = ()) -> list[Event]:
        """Events of choices that progressed or ended since the last call, then forget done requests."""
        events, self._outbox = self._outbox, []
        seen: set[int] = set()
        for c in [*self._touched, *progressed]:
            if id(c) in seen:
                continue
            seen.add(id(c))
            ev = c.take_event()
            if ev is not None:
                events.append((c.request.peer, ev))
            if c.request.done:
                self.requests.pop(c.request.id, None)
        self._touched = []
        return events

    def _expire(self, now_ms: int) -> None:
        for req in list(self.requests.values()):
            if req.deadline_ms and now_ms >= req.deadline_ms:
                self.abort(req.id, common_pb2.FINISH_REASON_ERROR, common_pb2.Error(
                    code=common_pb2.ERROR_CODE_DEADLINE_EXCEEDED, message="the request's deadline passed"))

    def _collect_encoded(self) -> None:
        """Queue the choices of requests whose images are encoded; end those whose encode failed."""
        if self._encoder is None:
            return
        while not self._encoder.done.empty():
            req = self._encoder.done.get()
            self.encoding.pop(req.id, None)
            if req.done:
                continue   # aborted or expired while encoding: its events went out already
            if req.images.error is not None:
                self.abort(req.id, common_pb2.FINISH_REASON_ERROR, req.images.error)
            elif req.images.ready:
                self.waiting.extend(req.choices)
            # else given up without an error (deadline, stop): _expire or abort_all ends it

    def _admit(self) -> None:
        while self.waiting and self.free_slots:
            c = self.waiting.popleft()
            c.slot, c.prefilled = self._take_slot(c.request.key)
            c.cached_tokens = c.prefilled
            self.running.append(c)

    def _take_slot(self, prompt: list[int]) -> tuple[int, int]:
        """A free slot for `prompt` and how many of its first tokens the slot's KV already holds:
        the slot whose last prompt shares the longest prefix with this one (a conversation's
        next turn, a shared system prompt), else the least recently used. At least MIN_PREFILL
        prompt tokens are left to prefill: a one-token prefill runs the engines' decode kernels,
        whose results differ slightly from a prompt's, and the answer must not depend on reuse.
        A match that would throw away most of what its slot holds (the same question about
        another image, which shares only the text before the image) goes to an empty slot
        instead while there is one, so the longer cached prompt stays for its next turn."""
        slot, keep = self.free_slots[0], 0
        if self.prefix_cache:
            for s in self.free_slots:
                n = _common_prefix(self.held.get(s), prompt)
                if n > keep:
                    slot, keep = s, n
            held = len(self.held.get(slot) or ())
            if keep and 2 * keep < held:
                empty = next((s for s in self.free_slots if not self.held.get(s)), None)
                if empty is not None:
                    slot, keep = empty, 0
            keep = max(0, min(keep, len(prompt) - MIN_PREFILL))
        self.free_slots.remove(slot)
        self.held.pop(slot, None)
        try:
            if keep:
                self.engine.truncate(slot, keep)
            else:
                self.engine.release(slot)
        except Exception:
            log.error("slot reset failed", exc_info=True, slot=slot)
            self.engine.release(slot)
            keep = 0
        return slot, keep

    def _decode(self, rows: list[tuple[Choice, np.ndarray]]) -> None:
        batch = [c for c in self.running if c.next_token is not None]
        if not batch:
            return
        try:
            logits = self.engine.decode([c.slot for c in batch], [c.next_token for c in batch])
        except Exception as e:  # the batch's KV state is unknown now: end these sequences
            log.error("decode failed", exc_info=not _is_engine_error(e), error=str(e), batch=len(batch))
            for c in batch:
                self._end(c, common_pb2.FINISH_REASON_ERROR, _internal(e))
            return
        for i, c in enumerate(batch):
            c.next_token = None
            rows.append((c, logits[i]))

    def _prefill(self, rows: list[tuple[Choice, np.ndarray]], target_s: float) -> None:
        budget = self.budget.tokens(target_s)
        for c in [c for c in self.running if c.prefilling]:
            if budget <= 0:
                break
            prompt = c.request.prompt
            end = c.prefilled + budget
            if self.align > 1:        # whole engine chunks: a piece ending inside one is paid in full
                end = -(-end // self.align) * self.align
            chunk = prompt[c.prefilled:end]
            embeds = c.request.images.chunk(c.prefilled, c.prefilled + len(chunk)) if c.request.images else None
            t0 = time.perf_counter()
            try:
                if embeds is None:
                    logits = self.engine.prefill(c.slot, chunk)
                else:
                    logits = self.engine.prefill(c.slot, chunk, embeds=embeds)
            except Exception as e:
                log.error("prefill failed", exc_info=not _is_engine_error(e), error=str(e), request_id=c.request.id)
                self._end(c, common_pb2.FINISH_REASON_ERROR, _internal(e))
                continue
            self.budget.record(len(chunk), time.perf_counter() - t0)
            budget -= len(chunk)
            c.prefilled += len(chunk)
            if not c.prefilling:
                rows.append((c, np.asarray(logits).reshape(-1, logits.shape[-1])[-1]))

    # ---- endings ------------------------------------------------------------------------
    def _end(self, c: Choice, reason: int, error: common_pb2.Error | None) -> None:
        if c.finished:
            return
        c.finish(reason, error=error)
        if c.slot is None:
            try:
                self.waiting.remove(c)
            except ValueError:
                pass
        self._release(c, reuse=error is None)
        self._touched.append(c)

    def _release(self, c: Choice, reuse: bool = True) -> None:
        """Free the choice's slot. Its prefilled prompt tokens stay in the KV for a later prompt
        that starts the same way, unless the slot's state is in doubt (an engine error)."""
        if c.slot is None:
            return
        if reuse and self.prefix_cache and c.prefilled:
            self.held[c.slot] = c.request.key[:c.prefilled]
        else:
            try:
                self.engine.release(c.slot)
            except Exception:
                log.error("release failed", exc_info=True, slot=c.slot)
        self.free_slots.append(c.slot)
        self.running.remove(c)
        c.slot = None


def _common_prefix(a: list[int] | None, b: list[int]) -> int:
    if not a:
        return 0
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def _is_engine_error(e: Exception) -> bool:
    from npuflow.engine.base import EngineError
    return isinstance(e, EngineError)


def _internal(e: Exception) -> common_pb2.Error:
    return common_pb2.Error(code=common_pb2.ERROR_CODE_INTERNAL, message=f"engine failed: {e}")


def _error_event(request_id: str, index: int, error: common_pb2.Error, prompt_tokens: int) -> worker_pb2.TokenEvent:
    return worker_pb2.TokenEvent(request_id=request_id, index=index, finish_reason=common_pb2.FINISH_REASON_ERROR,
                                 error=error, prompt_tokens=prompt_tokens)
