"""A fake of `npuflow serve`'s supervisor for the gateway's model lifecycle: it binds the control
ROUTER (control.proto) and "starts" a model's worker as a FakeWorker on the model's endpoint
(after `start_delay` seconds, like a process loading its model), stops it on request, and can
crash one (an `exited` event, as the real supervisor sends when a worker dies)."""
from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio

from npuflow.transport import make_socket
from npuflow.v1 import control_pb2

from gw_fakes import FakeWorker

PS = control_pb2.ProcessState


class FakeSupervisor:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, endpoints: dict[str, str]):
        self.ctx, self.endpoints = ctx, endpoints      # model id -> its worker endpoint
        self.workers: dict[str, FakeWorker] = {}
        self.starts: list[str] = []                    # every start command, in order
        self.stops: list[str] = []
        self.start_delay = 0.0
        self.fail: dict[str, str] = {}                 # model -> the reason its Hello gives
        self.worker_delay = 0.001                      # each started FakeWorker's seconds per token
        self._peers: set[bytes] = set()
        self._pending: list[asyncio.Task] = []
        self.sock = make_socket(ctx, zmq.ROUTER, endpoint, bind=True)
        self._task = asyncio.create_task(self._loop())

    def preload(self, model: str) -> None:
        """A worker the supervisor started before the gateway came up."""
        self.workers[model] = FakeWorker(self.ctx, self.endpoints[model], model)

    async def close(self) -> None:
        self._task.cancel()
        for t in self._pending:
            t.cancel()
        await asyncio.gather(self._task, *self._pending, return_exceptions=True)
        for w in self.workers.values():
            await w.close()
        self.sock.close(linger=0)

    async def crash(self, model: str) -> None:
        w = self.workers.pop(model)
        await w.close()
        ev = control_pb2.FromSupervisor(exited=control_pb2.WorkerProcess(
            model=model, state=PS.PROCESS_STATE_STOPPED, exit_code=-9))
        for peer in self._peers:
            await self.sock.send_multipart([peer, ev.SerializeToString()])

    async def _loop(self) -> None:
        while True:
            peer, data = await self.sock.recv_multipart()
            self._peers.add(peer)
            msg = control_pb2.ToSupervisor.FromString(data)
            kind = msg.WhichOneof("kind")
            if kind == "start":
                self._pending.append(asyncio.create_task(self._start(peer, msg.seq, msg.start.model)))
            elif kind == "stop":
                model = msg.stop.model
                self.stops.append(model)
                w = self.workers.pop(model, None)
                if w is not None:
                    await w.close()
                await self._answer(peer, msg.seq, worker=control_pb2.WorkerProcess(
                    model=model, state=PS.PROCESS_STATE_STOPPED, requested=True))
            elif kind == "list":
                out = control_pb2.FromSupervisor(seq=msg.seq)
                for model in self.workers:
                    out.workers.workers.add(model=model, state=PS.PROCESS_STATE_RUNNING, pid=1)
                await self.sock.send_multipart([peer, out.SerializeToString()])

    async def _start(self, peer: bytes, seq: int, model: str) -> None:
        self.starts.append(model)
        if model not in self.endpoints:
            await self._answer(peer, seq, error=f"no model '{model}'")
            return
        await self._answer(peer, seq, worker=control_pb2.WorkerProcess(model=model, state=PS.PROCESS_STATE_RUNNING,
                                                                        pid=1))
        if model not in self.workers:
            await asyncio.sleep(self.start_delay)
            w = FakeWorker(self.ctx, self.endpoints[model], model, failed=self.fail.get(model, ""))
            w.delay = self.worker_delay
            self.workers[model] = w

    async def _answer(self, peer: bytes, seq: int, **kind) -> None:
        await self.sock.send_multipart([peer, control_pb2.FromSupervisor(seq=seq, **kind).SerializeToString()])
