"""Background responses (`background: true`): the request returns at once with the response
`queued`; the generation runs on as a task of the gateway's event loop, its stored state moving
to `in_progress` at its first tokens and then to what it ended as, for `GET /v1/responses/{id}`
to poll. `POST /v1/responses/{id}/cancel` (or DELETE) stops the task, which aborts the worker's
request as a client leaving a stream does, and stores the response `cancelled`. Runs are bounded
as any request is: admitted into the model's queue before the reply, and cut at
server.request_timeout_s. Stopping the gateway cancels the runs still going.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from npuflow.logs import get_logger

log = get_logger("gateway")


class BackgroundRuns:
    """The background responses still running, by response id."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task] = {}

    def __contains__(self, rid: str) -> bool:
        return rid in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, rid: str, run: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.get_running_loop().create_task(run(), name=f"background {rid}")
        self._tasks[rid] = task
        task.add_done_callback(lambda t: self._ended(rid, t))

    def _ended(self, rid: str, task: asyncio.Task) -> None:
        self._tasks.pop(rid, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("background response failed", response_id=rid, error=repr(task.exception()))

    async def cancel(self, rid: str) -> bool:
        """Stop rid's run and wait until it has stored its end; False if it was not running."""
        task = self._tasks.get(rid)
        if task is None:
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    async def close(self) -> None:
        for rid in list(self._tasks):
            await self.cancel(rid)
