"""The gateway's client of the supervisor's control socket (control.proto): start, stop and
list worker processes, and hear of workers that exited by themselves.

One DEALER, one receive loop: each command carries a fresh seq and waits on a future the loop
resolves when the answer with that seq arrives; events (seq 0) go to `on_exit(model,
exit_code)`. Having sent a command makes this gateway the owner of worker restarts (see
npuflow/supervisor_control.py), so the lifecycle code sends one (a list) as soon as it starts.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import Callable

import zmq

from npuflow.gateway.peer_watch import Dealer
from npuflow.logs import get_logger
from npuflow.transport import make_socket
from npuflow.v1 import control_pb2

log = get_logger("gateway")

SEND_RETRY_S = 0.02   # the DEALER refuses frames until its connection is up


class SupervisorError(Exception):
    """The supervisor did not answer in time, or answered with an error."""


class SupervisorLink:
    def __init__(self, endpoint: str, ctx: zmq.Context, on_exit: Callable[[str, int], None]):
        self.endpoint = endpoint
        self._ctx = ctx
        self._on_exit = on_exit
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._sock: zmq.Socket | None = None
        self._dealer: Dealer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._sock = make_socket(self._ctx, zmq.DEALER, self.endpoint, bind=False)
        self._dealer = Dealer(self._sock)
        self._task = asyncio.create_task(self._recv_loop(), name="recv_from_supervisor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(SupervisorError("the link to the supervisor is closed"))
        self._pending.clear()
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = self._dealer = None

    # commands ----------------------------------------------------------------------------
    async def start_worker(self, model: str, timeout: float = 10.0) -> control_pb2.WorkerProcess:
        msg = control_pb2.ToSupervisor(start=control_pb2.StartWorker(model=model))
        return (await self._call(msg, timeout)).worker

    async def stop_worker(self, model: str, timeout: float = 30.0) -> control_pb2.WorkerProcess:
        msg = control_pb2.ToSupervisor(stop=control_pb2.StopWorker(model=model))
        return (await self._call(msg, timeout)).worker

    async def list_workers(self, timeout: float = 5.0) -> dict[str, control_pb2.WorkerProcess]:
        reply = await self._call(control_pb2.ToSupervisor(list=control_pb2.ListWorkers()), timeout)
        return {w.model: w for w in reply.workers.workers}

    async def _call(self, msg: control_pb2.ToSupervisor, timeout: float) -> control_pb2.FromSupervisor:
        if self._dealer is None:
            raise SupervisorError("the link to the supervisor is not started")
        msg.seq = seq = next(self._seq)
        kind = msg.WhichOneof("kind")
        fut = self._pending[seq] = asyncio.get_running_loop().create_future()
        deadline = time.monotonic() + timeout
        try:
            data = msg.SerializeToString()
            while not self._dealer.send(data):
                if time.monotonic() >= deadline:
                    raise SupervisorError(f"the supervisor is not reachable at {self.endpoint}")
                await asyncio.sleep(SEND_RETRY_S)
            try:
                reply = await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))
            except (asyncio.TimeoutError, TimeoutError):
                raise SupervisorError(f"the supervisor did not answer {kind} within {timeout:g} s") from None
        finally:
            self._pending.pop(seq, None)
        if reply.WhichOneof("kind") == "error":
            raise SupervisorError(reply.error)
        return reply

    # receive side ------------------------------------------------------------------------
    async def _recv_loop(self) -> None:
        async for batch in self._dealer.batches():
            for data in batch:
                try:
                    msg = control_pb2.FromSupervisor.FromString(data)
                except Exception:
                    log.warning("undecodable frame from the supervisor", size=len(data))
                    continue
                if msg.seq == 0:
                    self._event(msg)
                    continue
                fut = self._pending.get(msg.seq)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    def _event(self, msg: control_pb2.FromSupervisor) -> None:
        if msg.WhichOneof("kind") != "exited":
            return
        w = msg.exited
        log.info("worker exited by itself", model=w.model, pid=w.pid, exit_code=w.exit_code)
        try:
            self._on_exit(w.model, w.exit_code)
        except Exception:
            log.error("on_exit failed", exc_info=True, model=w.model)
