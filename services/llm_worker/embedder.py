"""The scheduler of an embedding model's worker: EmbedRequests in arrival order, one batch of
one request per step.

It offers the WorkerLink what the generating Scheduler offers (submit, abort, step, has_work,
the counts for heartbeats), so the link's socket loop, liveness and shutdown are the same for both
kinds of model. A request is planned when it arrives (inputs checked, cut into batches of similar
lengths: npuflow.engine.embed) and computed one batch per step, so an Abort or a passed deadline
stops it between two graph runs; its answer is one EmbedResult with every vector.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from npuflow.engine.base import EngineError
from npuflow.engine.embed import EmbedEngine, EmbedError, EmbedJob
from npuflow.logs import get_logger
from npuflow.v1 import common_pb2, worker_pb2

log = get_logger("worker")

Event = tuple[bytes, worker_pb2.EmbedResult]


@dataclass
class _Request:
    id: str
    peer: bytes
    job: EmbedJob
    deadline_ms: int


def error_result(request_id: str, code: int, message: str, param: str = "") -> worker_pb2.EmbedResult:
    return worker_pb2.EmbedResult(request_id=request_id, error=common_pb2.Error(code=code, message=message,
                                                                                param=param))


class EmbedScheduler:
    def __init__(self, engine: EmbedEngine, *, max_batch: int, max_queue: int):
        self.engine = engine
        self.capacity = max(1, max_batch) + max_queue   # requests in flight at most, as the gateway admits
        self.queue: deque[_Request] = deque()
        self.requests: dict[str, _Request] = {}
        self._outbox: list[Event] = []

    # ---- inputs -------------------------------------------------------------------------
    def submit(self, msg: worker_pb2.EmbedRequest, peer: bytes) -> None:
        rid = msg.request_id
        if rid in self.requests:
            self.submit_rejected(msg, peer, common_pb2.Error(code=common_pb2.ERROR_CODE_INVALID_ARGUMENT,
                                                             message=f"request {rid} is already running",
                                                             param="request_id"))
            return
        if len(self.requests) >= self.capacity:
            self.submit_rejected(msg, peer, common_pb2.Error(
                code=common_pb2.ERROR_CODE_OVERLOADED,
                message=f"the model's queue is full ({len(self.requests)} requests in flight)"))
            return
        try:
            job = self.engine.plan([list(x.ids) for x in msg.inputs], msg.dimensions)
        except EmbedError as e:
            self._outbox.append((peer, error_result(rid, common_pb2.ERROR_CODE_INVALID_ARGUMENT, str(e), e.param)))
            return
        req = _Request(rid, peer, job, msg.deadline_unix_ms)
        self.requests[rid] = req
        self.queue.append(req)

    def submit_rejected(self, msg: worker_pb2.EmbedRequest, peer: bytes, error: common_pb2.Error) -> None:
        self._outbox.append((peer, worker_pb2.EmbedResult(request_id=msg.request_id, error=error)))

    def abort(self, request_id: str, reason: int = common_pb2.FINISH_REASON_ABORT,
              error: common_pb2.Error | None = None) -> None:
        """Drop a request; with an error (shutdown) the gateway is told, an Abort needs no answer."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return
        self.queue.remove(req)
        if error is not None:
            self._outbox.append((req.peer, worker_pb2.EmbedResult(request_id=request_id, error=error)))

    def abort_all(self, reason: int, error: common_pb2.Error | None = None) -> None:
        for rid in list(self.requests):
            self.abort(rid, reason, error)

    # ---- state --------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self.queue or self._outbox)

    @property
    def n_running(self) -> int:
        return 1 if self.queue else 0

    @property
    def n_waiting(self) -> int:
        return max(0, len(self.queue) - 1)

    def close(self) -> None:
        pass

    # ---- the step -----------------------------------------------------------------------
    def step(self) -> list[Event]:
        now_ms = int(time.time() * 1000)
        for req in [r for r in self.queue if r.deadline_ms and now_ms > r.deadline_ms]:
            self.abort(req.id, error=common_pb2.Error(code=common_pb2.ERROR_CODE_DEADLINE_EXCEEDED,
                                                      message="The request passed its deadline and was stopped."))
        if self.queue:
            self._run(self.queue[0])
        return self.take_events()

    def _run(self, req: _Request) -> None:
        job = req.job
        group = job.groups[job.done]
        try:
            job.put(group, self.engine.run_batch([job.ids[i] for i in group]))
        except EngineError as e:
            self.abort(req.id, error=common_pb2.Error(code=common_pb2.ERROR_CODE_INVALID_ARGUMENT, message=str(e)))
            return
        except Exception as e:   # an engine failure: this request fails, the worker keeps serving
            log.error("embedding failed", exc_info=True, request_id=req.id)
            self.abort(req.id, error=common_pb2.Error(code=common_pb2.ERROR_CODE_INTERNAL,
                                                      message=f"the engine failed: {type(e).__name__}: {e}"))
            return
        if job.done < len(job.groups):
            return
        self.queue.popleft()
        del self.requests[req.id]
        vectors = job.result()
        self._outbox.append((req.peer, worker_pb2.EmbedResult(
            request_id=req.id, dimensions=vectors.shape[1], vectors=vectors.astype("<f4").tobytes(),
            prompt_tokens=job.tokens)))

    def take_events(self) -> list[Event]:
        events, self._outbox = self._outbox, []
        return events
