"""The worker's socket loop: one ROUTER (`recv_from_gateway`), hello/heartbeat, event framing.

Every frame is [peer identity, serialized FromWorker]. The first frame to a peer is a Hello.
Between scheduler steps the socket is drained without blocking, so a ping is answered within one
step (about 100 ms) even while generating. The events of one step go out as one TokenEvents
message per peer.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

import zmq
from google.protobuf.message import DecodeError

from npuflow.logs import get_logger
from npuflow.transport import make_socket, remove_ipc_file
from npuflow.v1 import common_pb2, worker_pb2

from .scheduler import Event, Scheduler

log = get_logger("worker")

IDLE_POLL_MS = 100      # how long to wait for frames when there is nothing to do
MAX_FRAMES_PER_TURN = 1000
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


class WorkerLink:
    def __init__(self, scheduler: Scheduler, info: WorkerInfo, endpoint: str, *, grace_s: float = SHUTDOWN_GRACE_S):
        self.scheduler = scheduler
        self.grace_s = grace_s
        self.info = info
        self.endpoint = endpoint
        self.worker_id = uuid.uuid4().hex
        self._peers: set[bytes] = set()
        self._sock: zmq.Socket | None = None
        self._stopping_since: float | None = None

    def _send(self, peer: bytes, msg: worker_pb2.FromWorker) -> None:
        if peer not in self._peers:
            self._peers.add(peer)
            i = self.info
            hello = worker_pb2.FromWorker(hello=worker_pb2.Hello(
                model=i.model, worker_id=self.worker_id, context_length=i.context_length, max_batch=i.max_batch,
                vocab_size=i.vocab_size, engine=i.engine, pid=os.getpid(), eos_token_ids=i.eos_token_ids,
                created_unix=i.created))
            self._sock.send_multipart([peer, hello.SerializeToString()])
        self._sock.send_multipart([peer, msg.SerializeToString()])

    def _send_events(self, events: list[Event]) -> None:
        by_peer: dict[bytes, list[worker_pb2.TokenEvent]] = defaultdict(list)
        for peer, ev in events:
            by_peer[peer].append(ev)
        for peer, evs in by_peer.items():
            self._send(peer, worker_pb2.FromWorker(events=worker_pb2.TokenEvents(events=evs)))

    def _handle(self, peer: bytes, payload: bytes) -> None:
        try:
            msg = worker_pb2.ToWorker.FromString(payload)
        except DecodeError:
            log.warning("dropped undecodable frame", bytes=len(payload))
            return
        kind = msg.WhichOneof("kind")
        if kind == "ping":
            self._send(peer, worker_pb2.FromWorker(heartbeat=worker_pb2.Heartbeat(
                worker_id=self.worker_id, running=self.scheduler.n_running, waiting=self.scheduler.n_waiting,
                sent_unix_ms=msg.ping.sent_unix_ms)))
        elif kind == "generate":
            if self._stopping_since is not None:
                self.scheduler.submit_rejected(msg.generate, peer, common_pb2.Error(
                    code=common_pb2.ERROR_CODE_WORKER_LOST, message="the worker is shutting down"))
            else:
                self.scheduler.submit(msg.generate, peer)
        elif kind == "abort":
            self.scheduler.abort(msg.abort.request_id)
        else:
            log.warning("dropped empty frame")

    def _drain(self, timeout_ms: int) -> None:
        sock = self._sock
        if not sock.poll(timeout_ms):
            return
        for _ in range(MAX_FRAMES_PER_TURN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 2:
                self._handle(frames[0], frames[1])
            else:
                log.warning("dropped malformed frame", parts=len(frames))

    def serve(self, stop: threading.Event, ctx: zmq.Context | None = None) -> None:
        """Bind, then run until `stop` is set and in-flight requests are done (or the grace ran out)."""
        ctx = ctx or zmq.Context.instance()
        self._sock = make_socket(ctx, zmq.ROUTER, self.endpoint, bind=True)
        log.info("serving", endpoint=self.endpoint, model=self.info.model, worker_id=self.worker_id)
        sched = self.scheduler
        try:
            while True:
                if stop.is_set() and self._stopping_since is None:
                    self._stopping_since = time.monotonic()
                    log.info("stopping", running=sched.n_running, waiting=sched.n_waiting)
                if self._stopping_since is not None:
                    if not sched.requests and not sched.has_work:
                        break
                    if time.monotonic() - self._stopping_since > self.grace_s:
                        sched.abort_all(common_pb2.FINISH_REASON_ERROR, common_pb2.Error(
                            code=common_pb2.ERROR_CODE_WORKER_LOST, message="the worker is shutting down"))
                        self._send_events(sched.take_events())
                        break
                self._drain(0 if sched.has_work else IDLE_POLL_MS)
                if sched.has_work:
                    self._send_events(sched.step())
        finally:
            self._sock.close(linger=500)  # let the last events go out
            self._sock = None
            remove_ipc_file(self.endpoint)
