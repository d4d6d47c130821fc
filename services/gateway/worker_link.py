"""The gateway's connection to each llm_worker: one DEALER, one receive loop, one ping loop.

Protocol (worker.proto): the gateway pings every 200 ms; the worker answers Heartbeat, preceded
by Hello on first contact from a new peer. A model is ready after Hello, or failed after a Hello
with state FAILED (its requests get 503 model_not_available at once, until a worker with a new
worker_id says it is loaded). Silence for 1 s, or a
Hello with a new worker_id, ends every in-flight request of that model with WORKER_LOST.
Events of request ids the gateway no longer knows are answered with an Abort.
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import zmq

from npuflow.config import ModelSettings, Settings
from npuflow.gateway.client import Delta, EmbedParams, Embeddings, GenerateParams, ModelInfo
from npuflow.gateway.errors import ApiError, model_not_available, model_not_found
from npuflow.gateway.peer_watch import Dealer, watch_disconnects
from npuflow.gateway.request_stream import RequestStream
from npuflow.logs import get_logger
from npuflow.transport import make_socket
from npuflow.v1 import common_pb2, worker_pb2

log = get_logger("gateway")
E = common_pb2.ErrorCode
FR = common_pb2.FinishReason

PING_INTERVAL_S = 0.2
PING_INTERVAL_NOT_READY_S = 0.05   # find a (re)starting worker quickly
LOST_AFTER_S = 1.0


class WorkerLink:
    """One model's worker as seen from the gateway."""

    def __init__(self, model: ModelSettings, ctx: zmq.Context):
        self.model = model
        self._ctx = ctx
        self.sock: zmq.Socket | None = None
        self.dealer: Dealer | None = None
        self.requests: dict[str, RequestStream] = {}
        self.embeds: dict[str, asyncio.Future] = {}   # embed requests in flight -> their EmbedResult
        self.hello: worker_pb2.Hello | None = None
        self.ready = False
        self.failed = ""   # why the worker cannot start (its Hello said FAILED); "" = not failed
        self._ready_evt = asyncio.Event()   # set when ready or failed: waiters decide
        self.last_rx = 0.0
        self.restarts = 0
        self.waiting = 0   # the worker's queue and batch at its last heartbeat
        self.running = 0
        self._tasks: list[asyncio.Task] = []
        self._started = time.time()

    # lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        # no reconnect back-off: a worker loaded on demand binds a moment after this connects, and
        # ZMQ's growing interval would add up to its maximum to every cold start
        self.sock = make_socket(self._ctx, zmq.DEALER, self.model.endpoint, bind=False, reconnect_max_ms=0)
        self.dealer = Dealer(self.sock)
        self._tasks = [asyncio.create_task(self._recv_loop(), name=f"recv_from_worker[{self.model.id}]"),
                       asyncio.create_task(self._ping_loop(), name=f"ping_worker[{self.model.id}]"),
                       asyncio.create_task(watch_disconnects(self.sock, self._on_disconnect),
                                           name=f"watch_worker[{self.model.id}]")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_all(E.ERROR_CODE_WORKER_LOST, "the gateway is shutting down")
        if self.sock is not None:
            self.sock.close(linger=0)

    def send(self, msg: worker_pb2.ToWorker) -> bool:
        return self.dealer is not None and self.dealer.send(msg.SerializeToString())

    # receive side ------------------------------------------------------------------------
    async def _recv_loop(self) -> None:
        FromString = worker_pb2.FromWorker.FromString
        async for batch in self.dealer.batches():
            self.last_rx = time.monotonic()
            for data in batch:
                try:
                    msg = FromString(data)
                except Exception:
                    log.warning("undecodable frame from worker", model=self.model.id, size=len(data))
                    continue
                kind = msg.WhichOneof("kind")
                if kind == "events":
                    self._on_events(msg.events.events)
                elif kind == "heartbeat":
                    self._on_heartbeat(msg.heartbeat)
                elif kind == "hello":
                    self._on_hello(msg.hello)
                elif kind == "embedded":
                    fut = self.embeds.get(msg.embedded.request_id)
                    if fut is not None and not fut.done():
                        fut.set_result(msg.embedded)

    def _on_events(self, events) -> None:
        requests = self.requests
        for ev in events:
            st = requests.get(ev.request_id)
            if st is not None:
                st.put(ev)
            elif ev.finish_reason == FR.FINISH_REASON_UNSPECIFIED:
                self.send(worker_pb2.ToWorker(abort=worker_pb2.Abort(request_id=ev.request_id)))

    def _on_heartbeat(self, hb: worker_pb2.Heartbeat) -> None:
        self.waiting = hb.waiting
        self.running = hb.running
        if not self.ready and not self.failed and self.hello is not None and hb.worker_id == self.hello.worker_id:
            self._set_ready(True)
            log.info("worker answering again", model=self.model.id, worker_id=hb.worker_id)

    def _on_hello(self, hello: worker_pb2.Hello) -> None:
        old = self.hello
        if old is not None and old.worker_id != hello.worker_id:
            self.restarts += 1
            self._fail_all(E.ERROR_CODE_WORKER_LOST, f"the worker of model '{self.model.id}' restarted")
        if hello.model and hello.model != self.model.id:
            log.warning("worker serves another model", expected=self.model.id, got=hello.model)
        self.hello = hello
        if hello.state == common_pb2.MODEL_STATE_FAILED:
            reason = hello.state_reason or "its worker failed to start"
            if (old is None or old.worker_id != hello.worker_id) or reason != self.failed:
                log.warning("model failed", model=self.model.id, worker_id=hello.worker_id, reason=reason)
            self.failed = reason
            self.ready = False
            self._ready_evt.set()
            return
        self.failed = ""
        self._set_ready(True)
        log.info("worker ready", model=self.model.id, worker_id=hello.worker_id,
                 context_length=hello.context_length, max_batch=hello.max_batch, pid=hello.pid)

    # liveness ----------------------------------------------------------------------------
    async def _ping_loop(self) -> None:
        ping = worker_pb2.ToWorker()
        while True:
            ping.ping.sent_unix_ms = int(time.time() * 1000)
            self.send(ping)
            if self.ready and time.monotonic() - self.last_rx > LOST_AFTER_S:
                self._lost()
            await asyncio.sleep(PING_INTERVAL_S if self.ready or self.failed else PING_INTERVAL_NOT_READY_S)

    def _lost(self, why: str = "stopped answering") -> None:
        self._set_ready(False)
        log.warning("worker lost", model=self.model.id, why=why, in_flight=len(self.requests))
        self._fail_all(E.ERROR_CODE_WORKER_LOST, f"the worker of model '{self.model.id}' {why}")

    def _on_disconnect(self) -> None:
        if self.ready:
            self._lost("went away (its connection closed)")

    def _set_ready(self, ready: bool) -> None:
        self.ready = ready
        if ready:
            self._ready_evt.set()
        else:
            self._ready_evt.clear()

    def _fail_all(self, code: int, message: str) -> None:
        for st in self.requests.values():
            st.fail(code, message)
        for rid, fut in self.embeds.items():
            if not fut.done():
                fut.set_result(worker_pb2.EmbedResult(request_id=rid, error=common_pb2.Error(code=code, message=message)))

    # requests ----------------------------------------------------------------------------
    def info(self) -> ModelInfo:
        h = self.hello
        ctx_len = (h.context_length if h and h.context_length else self.model.context_length)
        return ModelInfo(id=self.model.id, ready=self.ready, context_length=ctx_len,
                         max_batch=(h.max_batch if h and h.max_batch else self.model.max_batch),
                         created=int(h.created_unix if h and h.created_unix else self._started),
                         worker_id=h.worker_id if h else "",
                         state="failed" if self.failed else ("loaded" if self.ready else "loading"),
                         reason=self.failed, vision=bool(h and h.vision), embedding=bool(h and h.embedding),
                         embedding_dimensions=h.embedding_dimensions if h else 0, matryoshka=bool(h and h.matryoshka))

    async def wait_ready(self, timeout: float) -> ModelInfo:
        if not self.ready and not self.failed:
            try:
                await asyncio.wait_for(self._ready_evt.wait(), max(timeout, 0.0))
            except (asyncio.TimeoutError, TimeoutError):
                raise ApiError(503, f"The model '{self.model.id}' is not ready (its worker is starting or "
                                    f"restarting); try again later.", code="model_not_ready") from None
        if self.failed:
            raise model_not_available(self.model.id, self.failed)
        return self.info()

    async def generate(self, p: GenerateParams) -> AsyncIterator[list[Delta]]:
        if p.request_id in self.requests:
            raise ApiError(400, f"request id {p.request_id} is already in flight", code="duplicate_request")
        if self.failed:
            raise model_not_available(self.model.id, self.failed)
        if not self.ready:
            raise ApiError(503, f"The model '{self.model.id}' is not ready; try again later.", code="model_not_ready")
        st = RequestStream(p.request_id, max(1, p.n))
        self.requests[p.request_id] = st
        deadline: asyncio.TimerHandle | None = None
        try:
            msg = worker_pb2.ToWorker()
            g = msg.generate
            g.request_id, g.model, g.n = p.request_id, p.model, max(1, p.n)
            g.prompt_token_ids.extend(p.prompt_token_ids)
            g.sampling.CopyFrom(p.sampling)
            g.deadline_unix_ms = p.deadline_unix_ms
            g.grammar, g.grammar_param = p.grammar, p.grammar_param
            for im in p.images:
                g.images.add(data=im.data, detail=im.detail, start=im.start, end=im.end, param=im.param)
            if not self.send(msg):
                raise ApiError(503, f"The worker of model '{self.model.id}' is not reachable.", code="worker_lost")
            if p.deadline_unix_ms:   # ends the request at its deadline even while events keep coming
                loop = asyncio.get_running_loop()
                deadline = loop.call_later(max(0.0, p.deadline_unix_ms / 1000.0 - time.time()), st.fail,
                                           E.ERROR_CODE_DEADLINE_EXCEEDED,
                                           "The request passed its deadline and was stopped.")
            while not st.finished or st.pending:
                yield await st.get()
        finally:
            if deadline is not None:
                deadline.cancel()
            self.requests.pop(p.request_id, None)
            if st.worker_open > 0:   # the one place an abort is sent
                self.send(worker_pb2.ToWorker(abort=worker_pb2.Abort(request_id=p.request_id)))


    async def embed(self, p: EmbedParams) -> Embeddings:
        if p.request_id in self.embeds or p.request_id in self.requests:
            raise ApiError(400, f"request id {p.request_id} is already in flight", code="duplicate_request")
        if self.failed:
            raise model_not_available(self.model.id, self.failed)
        if not self.ready:
            raise ApiError(503, f"The model '{self.model.id}' is not ready; try again later.", code="model_not_ready")
        msg = worker_pb2.ToWorker()
        e = msg.embed
        e.request_id, e.model, e.dimensions, e.deadline_unix_ms = p.request_id, p.model, p.dimensions, p.deadline_unix_ms
        for ids in p.inputs:
            e.inputs.add().ids.extend(ids)
        fut = self.embeds[p.request_id] = asyncio.get_running_loop().create_future()
        answered = False
        try:
            if not self.send(msg):
                raise ApiError(503, f"The worker of model '{self.model.id}' is not reachable.", code="worker_lost")
            timeout = max(0.0, p.deadline_unix_ms / 1000.0 - time.time()) if p.deadline_unix_ms else None
            try:
                res = await asyncio.wait_for(asyncio.shield(fut), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                raise ApiError.from_code(E.ERROR_CODE_DEADLINE_EXCEEDED,
                                         "The request passed its deadline and was stopped.") from None
            answered = True
        finally:
            self.embeds.pop(p.request_id, None)
            if not answered:      # cancelled (client gone), deadline, not sent: the worker drops it
                self.send(worker_pb2.ToWorker(abort=worker_pb2.Abort(request_id=p.request_id)))
        if res.HasField("error") and res.error.code:
            raise ApiError.from_code(res.error.code, res.error.message, res.error.param)
        return Embeddings(dimensions=res.dimensions, vectors=res.vectors, prompt_tokens=res.prompt_tokens)


class WorkerPool:
    """One WorkerLink per model whose worker runs (or is starting). Without a supervisor every
    configured model has one from the start; with one (lifecycle.py) a link is opened when its
    model starts loading and closed once its worker stopped, so a model that is not loaded costs
    no socket and no pings."""

    def __init__(self, settings: Settings, ctx: zmq.Context, *, all_models: bool = True):
        self._ctx = ctx
        self.links = {m.id: WorkerLink(m, ctx) for m in settings.models} if all_models else {}
        self._started = False

    async def start(self) -> None:
        self._started = True
        for link in self.links.values():
            await link.start()

    async def stop(self) -> None:
        await asyncio.gather(*(link.stop() for link in self.links.values()))

    async def open(self, model: ModelSettings) -> WorkerLink:
        """A fresh link to the model's worker (the old one, if any, is closed first)."""
        await self.close(model.id)
        link = self.links[model.id] = WorkerLink(model, self._ctx)
        await link.start()
        return link

    async def close(self, model: str) -> None:
        """Close the model's link; its in-flight requests end with WORKER_LOST."""
        link = self.links.pop(model, None)
        if link is not None:
            await link.stop()

    def _link(self, model: str) -> WorkerLink:
        link = self.links.get(model)
        if link is None:
            raise model_not_found(model)
        return link

    def models(self) -> list[ModelInfo]:
        return [link.info() for link in self.links.values()]

    async def wait_ready(self, model: str, timeout: float) -> ModelInfo:
        return await self._link(model).wait_ready(timeout)

    def generate(self, params: GenerateParams) -> AsyncIterator[list[Delta]]:
        link = self.links.get(params.model)
        if link is None:
            raise ApiError(503, f"The model '{params.model}' is not loaded; try again.", code="model_not_ready")
        return link.generate(params)

    async def embed(self, params: EmbedParams) -> Embeddings:
        link = self.links.get(params.model)
        if link is None:
            raise ApiError(503, f"The model '{params.model}' is not loaded; try again.", code="model_not_ready")
        return await link.embed(params)

    def abort(self, model: str, request_id: str) -> None:
        link = self.links.get(model)
        if link is not None:
            link.send(worker_pb2.ToWorker(abort=worker_pb2.Abort(request_id=request_id)))

    def in_flight(self, model: str) -> int:
        link = self.links.get(model)
        return len(link.requests) + len(link.embeds) if link is not None else 0

    def health(self) -> dict[str, bool]:
        return {m: link.ready for m, link in self.links.items()}

    def stats(self) -> dict[str, dict[str, int]]:
        return {m: {"in_flight": len(l.requests) + len(l.embeds), "queued": l.waiting, "running": l.running, "restarts": l.restarts}
                for m, l in self.links.items()}
