"""The worker's sockets: one ROUTER (`recv_from_gateway`) served by its own I/O thread.

The I/O thread owns the ROUTER. It answers pings at once with a Heartbeat (so a long prefill
or a slow step never makes the gateway think the worker is gone), greets every new peer with a
Hello, hands generate/embed/abort frames to the scheduler thread through an inbox, and forwards the
scheduler's outgoing frames, which arrive on an inproc PUSH/PULL pair (a ZMQ socket is used by
one thread only). The scheduler thread (the caller of `serve`) runs steps while there is work
and otherwise waits on the inbox. The events of one step go out as one TokenEvents message per
peer. Every frame is [peer identity, serialized FromWorker].

`serve_failed` is what a worker whose model cannot start (a cause a restart does not cure) runs
instead: it binds the same ROUTER, says Hello with state FAILED and the reason, answers pings
and refuses every request with MODEL_NOT_AVAILABLE, and loads nothing. Staying up is what keeps
a supervisor or systemd (Restart=always) from restarting it in a loop.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass

import zmq

from npuflow.logs import get_logger
from npuflow.transport import make_socket, recv_waiting, remove_ipc_file, waiting
from npuflow.v1 import common_pb2, worker_pb2

from npuflow.memory import IdleTrim
from .scheduler import Event, Scheduler

log = get_logger("worker")

IDLE_WAIT_S = 0.1       # how long the scheduler thread sleeps on an empty inbox before re-checking
IO_POLL_MS = 50         # how often the I/O thread looks at its stop flag
SHUTDOWN_GRACE_S = 3.0  # on stop: let running requests finish this long, then end them


@dataclass(frozen=True)
class WorkerInfo:
    model: str
    context_length: int
    max_batch: int
    vocab_size: int
    engine: str
    eos_token_ids: tuple[int, ...]
    created: int
    vision: bool = False           # the package has a vision encoder: requests may carry images
    embedding: bool = False        # an embedding model: EmbedRequests, no GenerateRequests
    embedding_dimensions: int = 0
    matryoshka: bool = False
    start_seconds: float = 0.0     # process start -> worker entry (interpreter, imports)
    load_seconds: float = 0.0      # worker entry -> model loaded and ready to serve


class _IoThread(threading.Thread):
    """Owns the ROUTER and the PULL end of the outgoing pipe."""

    def __init__(self, link: "WorkerLink", router: zmq.Socket, outgoing: zmq.Socket):
        super().__init__(name="worker-io", daemon=True)
        self.link, self.router, self.outgoing = link, router, outgoing
        self.halt = threading.Event()
        self.peers: set[bytes] = set()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.outgoing, zmq.POLLIN)
        while not self.halt.is_set():
            ready = dict(poller.poll(IO_POLL_MS))
            if self.outgoing in ready:
                self._forward()
            if self.router in ready:
                self._receive()
        self._forward()  # the scheduler's last frames, pushed before it set `halt`

    def _send(self, peer: bytes, payload: bytes) -> None:
        if peer not in self.peers:
            self.peers.add(peer)
            self.router.send_multipart([peer, self.link.hello().SerializeToString()])
        self.router.send_multipart([peer, payload])

    def _forward(self) -> None:
        for peer, payload in waiting(self.outgoing, multipart=True):
            self._send(peer, payload)

    def _receive(self) -> None:
        for peer, msg in recv_waiting(self.router, worker_pb2.ToWorker):
            kind = msg.WhichOneof("kind")
            if kind == "ping":
                self._send(peer, self.link.heartbeat(msg.ping.sent_unix_ms).SerializeToString())
            elif kind in ("generate", "embed", "abort"):
                self.link.post(peer, msg)
            else:
                log.warning("dropped empty frame")


class WorkerLink:
    def __init__(self, scheduler: Scheduler, info: WorkerInfo, endpoint: str, *, grace_s: float = SHUTDOWN_GRACE_S):
        self.scheduler = scheduler
        self.grace_s = grace_s
        self.info = info
        self.endpoint = endpoint
        self.worker_id = uuid.uuid4().hex
        self._inbox: deque[tuple[bytes, worker_pb2.ToWorker]] = deque()
        self._wake = threading.Event()
        self._push: zmq.Socket | None = None
        self._stopping_since: float | None = None
        scheduler.wake = self._wake.set   # the encode thread: a request's images are ready

    # ---- called by the I/O thread ---------------------------------------------------------
    def hello(self) -> worker_pb2.FromWorker:
        i = self.info
        return worker_pb2.FromWorker(hello=worker_pb2.Hello(
            model=i.model, worker_id=self.worker_id, context_length=i.context_length, max_batch=i.max_batch,
            vocab_size=i.vocab_size, engine=i.engine, pid=os.getpid(), eos_token_ids=i.eos_token_ids,
            created_unix=i.created, state=common_pb2.MODEL_STATE_LOADED, vision=i.vision,
            start_seconds=i.start_seconds, load_seconds=i.load_seconds, embedding=i.embedding,
            embedding_dimensions=i.embedding_dimensions, matryoshka=i.matryoshka))

    def heartbeat(self, sent_unix_ms: int) -> worker_pb2.FromWorker:
        return worker_pb2.FromWorker(heartbeat=worker_pb2.Heartbeat(
            worker_id=self.worker_id, running=self.scheduler.n_running, waiting=self.scheduler.n_waiting,
            sent_unix_ms=sent_unix_ms))

    def post(self, peer: bytes, msg: worker_pb2.ToWorker) -> None:
        self._inbox.append((peer, msg))
        self._wake.set()

    # ---- the scheduler thread ---------------------------------------------------------------
    def _handle_inbox(self) -> None:
        while self._inbox:
            peer, msg = self._inbox.popleft()
            kind = msg.WhichOneof("kind")
            if kind == "abort":
                self.scheduler.abort(msg.abort.request_id)
            elif (kind == "embed") != self.info.embedding:   # the other kind of model
                self._refuse_kind(peer, msg)
            elif self._stopping_since is not None:
                self.scheduler.submit_rejected(getattr(msg, kind), peer, common_pb2.Error(
                    code=common_pb2.ERROR_CODE_WORKER_LOST, message="the worker is shutting down"))
            else:
                self.scheduler.submit(getattr(msg, kind), peer)

    def _refuse_kind(self, peer: bytes, msg: worker_pb2.ToWorker) -> None:
        """An embed request to a language model, or a generate request to an embedding model."""
        if msg.WhichOneof("kind") == "embed":
            error = common_pb2.Error(code=common_pb2.ERROR_CODE_INVALID_ARGUMENT, param="model",
                                     message=f"The model '{self.info.model}' is not an embedding model.")
            out = worker_pb2.FromWorker(embedded=worker_pb2.EmbedResult(request_id=msg.embed.request_id, error=error))
        else:
            g = msg.generate
            error = common_pb2.Error(code=common_pb2.ERROR_CODE_INVALID_ARGUMENT, param="model",
                                     message=f"The model '{self.info.model}' is an embedding model; use /v1/embeddings.")
            out = worker_pb2.FromWorker(events=worker_pb2.TokenEvents(events=[
                worker_pb2.TokenEvent(request_id=g.request_id, index=i, error=error,
                                      finish_reason=common_pb2.FINISH_REASON_ERROR) for i in range(max(1, g.n))]))
        self._push.send_multipart([peer, out.SerializeToString()])

    def _send_events(self, events: list[Event]) -> None:
        by_peer: dict[bytes, list[worker_pb2.TokenEvent]] = defaultdict(list)
        for peer, ev in events:
            if isinstance(ev, worker_pb2.EmbedResult):   # an embedding model's answer: one message each
                self._push.send_multipart([peer, worker_pb2.FromWorker(embedded=ev).SerializeToString()])
                continue
            by_peer[peer].append(ev)
        for peer, evs in by_peer.items():
            msg = worker_pb2.FromWorker(events=worker_pb2.TokenEvents(events=evs))
            self._push.send_multipart([peer, msg.SerializeToString()])

    def serve(self, stop: threading.Event, ctx: zmq.Context | None = None) -> None:
        """Bind, then run until `stop` is set and in-flight requests are done (or the grace ran out)."""
        ctx = ctx or zmq.Context.instance()
        pipe = f"inproc://worker-out-{self.worker_id}"
        router = make_socket(ctx, zmq.ROUTER, self.endpoint, bind=True)
        pull = make_socket(ctx, zmq.PULL, pipe, bind=True)
        self._push = make_socket(ctx, zmq.PUSH, pipe, bind=False)
        io = _IoThread(self, router, pull)
        io.start()
        log.info("serving", endpoint=self.endpoint, model=self.info.model, worker_id=self.worker_id)
        sched = self.scheduler
        trim = IdleTrim()
        try:
            while True:
                if stop.is_set() and self._stopping_since is None:
                    self._stopping_since = time.monotonic()
                    log.info("stopping", running=sched.n_running, waiting=sched.n_waiting)
                if self._stopping_since is not None:
                    if not sched.requests and not sched.has_work and not self._inbox:
                        break
                    if time.monotonic() - self._stopping_since > self.grace_s:
                        self._handle_inbox()
                        sched.abort_all(common_pb2.FINISH_REASON_ERROR, common_pb2.Error(
                            code=common_pb2.ERROR_CODE_WORKER_LOST, message="the worker is shutting down"))
                        self._send_events(sched.take_events())
                        break
                if not sched.has_work and not self._inbox:
                    trim(False)   # the burst is over: free heap pages go back to the system
                    self._wake.wait(IDLE_WAIT_S)
                else:
                    trim(True)
                self._wake.clear()
                self._handle_inbox()
                if sched.has_work:
                    self._send_events(sched.step())
        finally:
            sched.close()
            io.halt.set()
            io.join()
            self._push.close(linger=0)
            pull.close(linger=0)
            router.close(linger=500)  # let the last events go out
            self._push = None
            remove_ipc_file(self.endpoint)


def serve_failed(model: str, engine: str, endpoint: str, reason: str, stop: threading.Event,
                 ctx: zmq.Context | None = None) -> None:
    """Answer as the worker of a model that failed to start, until `stop` is set."""
    ctx = ctx or zmq.Context.instance()
    worker_id = uuid.uuid4().hex
    hello = worker_pb2.FromWorker(hello=worker_pb2.Hello(
        model=model, worker_id=worker_id, engine=engine, pid=os.getpid(),
        state=common_pb2.MODEL_STATE_FAILED, state_reason=reason)).SerializeToString()
    error = common_pb2.Error(code=common_pb2.ERROR_CODE_MODEL_NOT_AVAILABLE, message=reason)
    router = make_socket(ctx, zmq.ROUTER, endpoint, bind=True)
    peers: set[bytes] = set()
    log.info("serving as failed", endpoint=endpoint, model=model, worker_id=worker_id)
    try:
        while not stop.is_set():
            if not router.poll(IO_POLL_MS):
                continue
            for peer, msg in recv_waiting(router, worker_pb2.ToWorker):
                if peer not in peers:
                    peers.add(peer)
                    router.send_multipart([peer, hello])
                kind = msg.WhichOneof("kind")
                if kind == "ping":
                    out = worker_pb2.FromWorker(heartbeat=worker_pb2.Heartbeat(
                        worker_id=worker_id, sent_unix_ms=msg.ping.sent_unix_ms))
                elif kind == "generate":
                    g = msg.generate
                    out = worker_pb2.FromWorker(events=worker_pb2.TokenEvents(events=[
                        worker_pb2.TokenEvent(request_id=g.request_id, index=i, error=error,
                                              finish_reason=common_pb2.FINISH_REASON_ERROR,
                                              prompt_tokens=len(g.prompt_token_ids))
                        for i in range(max(1, g.n))]))
                elif kind == "embed":
                    out = worker_pb2.FromWorker(embedded=worker_pb2.EmbedResult(request_id=msg.embed.request_id,
                                                                                error=error))
                else:
                    continue
                router.send_multipart([peer, out.SerializeToString()])
    finally:
        router.close(linger=0)
        remove_ipc_file(endpoint)
