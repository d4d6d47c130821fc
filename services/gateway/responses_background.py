"""Background responses (`background: true`): the request returns at once with the response
`queued`; the generation runs on as a task of the gateway's event loop, its stored state moving
to `in_progress` at its first tokens and then to what it ended as, for `GET /v1/responses/{id}`
to poll. `POST /v1/responses/{id}/cancel` (or DELETE) stops the task, which aborts the worker's
request as a client leaving a stream does, and stores the response `cancelled`. Runs are bounded
as any request is: admitted into the model's queue before the reply, and cut at
server.request_timeout_s. Stopping the gateway cancels the runs still going.

Each run writes its stream events, numbered, to a log (EventLog): a background request made
with `stream: true` follows that log, and so does `GET /v1/responses/{id}?stream=true`
(`starting_after=N` resumes after event N), so a client whose connection drops loses no work and
picks the stream up where it was. A log is held while its run goes and until STREAMABLE_S after
the response was created, at most KEEP_ENDED logs of ended runs. A cancelled run's stream ends
after the deltas it made, with no terminal event (the API has none for a cancel).
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import AsyncIterator, Awaitable, Callable

from npuflow.logs import get_logger

log = get_logger("gateway")

STREAMABLE_S = 300.0     # a background response's events are held this long after it was created
KEEP_ENDED = 64          # and at most this many logs of runs that have ended


class EventLog:
    """A background run's stream events, numbered from 0 as they are added, for any number of
    followers."""

    def __init__(self, deadline_unix_ms: int, clock=time.monotonic) -> None:
        self.events: list[dict] = []
        self.ended = False
        self.deadline_unix_ms = deadline_unix_ms
        self.created = clock()
        self._wake = asyncio.Event()

    def add(self, events: list[dict]) -> None:
        for ev in events:
            ev["sequence_number"] = len(self.events)
            self.events.append(ev)
        self._notify()

    def end(self) -> None:
        self.ended = True
        self._notify()

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def follow(self, after: int = -1) -> AsyncIterator[list[dict]]:
        """The events after sequence number `after`, in batches as they come, until the run ends."""
        i = max(after + 1, 0)
        while True:
            wake = self._wake
            if i < len(self.events):
                batch, i = self.events[i:], len(self.events)
                yield batch
            elif self.ended:
                return
            else:
                await wake.wait()


class BackgroundRuns:
    """The background responses still running, by response id."""

    def __init__(self, clock=time.monotonic) -> None:
        self._tasks: dict[str, asyncio.Task] = {}
        self._logs: OrderedDict[str, EventLog] = OrderedDict()    # by creation; running and ended
        self._clock = clock

    def __contains__(self, rid: str) -> bool:
        return rid in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, rid: str, run: Callable[[EventLog], Awaitable[None]], first: list[dict],
              deadline_unix_ms: int) -> EventLog:
        """Run `run(log)` as rid's task, its log starting with the events `first`."""
        self._prune()
        events = self._logs[rid] = EventLog(deadline_unix_ms, self._clock)
        events.add(first)
        task = asyncio.get_running_loop().create_task(run(events), name=f"background {rid}")
        self._tasks[rid] = task
        task.add_done_callback(lambda t: self._ended(rid, t, events))
        return events

    def _ended(self, rid: str, task: asyncio.Task, events: EventLog) -> None:
        self._tasks.pop(rid, None)
        events.end()
        if not task.cancelled() and task.exception() is not None:
            log.error("background response failed", response_id=rid, error=repr(task.exception()))

    def events(self, rid: str) -> EventLog | None:
        """rid's event log, while it is held."""
        self._prune()
        return self._logs.get(rid)

    def forget(self, rid: str) -> None:
        self._logs.pop(rid, None)

    def _prune(self) -> None:
        old = self._clock() - STREAMABLE_S
        ended = [rid for rid, e in self._logs.items() if e.ended]
        for i, rid in enumerate(ended):
            if i < len(ended) - KEEP_ENDED or self._logs[rid].created < old:
                del self._logs[rid]

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
