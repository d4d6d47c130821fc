"""Keeps the standard grpc.health.v1 statuses in step with the tokenizer and the workers.

Statuses: "" (the whole server) and the npuflow service name are SERVING when GET /health answers
200 (the tokenizer answers, no model is starting, at least one is loaded; a model that failed for
good does not count against it); each model id is SERVING when it is loaded and the tokenizer
ready. Check reads the current state (it agrees with GET /health at any
moment); Watch streams follow a poll every POLL_S, as workers come, go and restart. On shutdown
everything turns NOT_SERVING.
"""
from __future__ import annotations

import asyncio
import contextlib

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from npuflow.gateway.model_state import health as stack_health
from npuflow.gateway.state import GatewayState

POLL_S = 0.1
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Health(health_aio.HealthServicer):
    def __init__(self, refresh):
        super().__init__()
        self._refresh = refresh

    async def Check(self, request, context):
        await self._refresh()
        return await super().Check(request, context)


class Readiness:
    def __init__(self, st: GatewayState, service_names: tuple[str, ...]):
        self.st = st
        self.service_names = service_names
        self.health = _Health(self.update)
        self._last: dict[str, bool] = {}
        self._task: asyncio.Task | None = None

    def statuses(self) -> dict[str, bool]:
        h = stack_health(self.st)
        out = {m.id: h.tokenizer and m.status == "loaded" for m in h.models}
        overall = h.serving
        out[""] = overall
        out.update({name: overall for name in self.service_names})
        return out

    async def update(self) -> None:
        now = self.statuses()
        for name, ok in now.items():
            if self._last.get(name) != ok:
                await self.health.set(name, SERVING if ok else NOT_SERVING)
        self._last = now

    async def start(self) -> None:
        await self.update()
        self._task = asyncio.create_task(self._follow(), name="grpc_health")

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await self.update()

    async def stop(self) -> None:
        """Everything NOT_SERVING from now on (the server is draining)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.health.enter_graceful_shutdown()
