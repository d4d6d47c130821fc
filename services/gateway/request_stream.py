"""Per-request state between a link's receive loop and the handler that streams the answer.

The receive loop appends TokenEvents without waiting; the handler takes everything that arrived
since it last looked, merged into one Delta per choice, so a slow client never slows the model
and never sees more chunks than it can read.
"""
from __future__ import annotations

import asyncio

from npuflow.gateway.client import Delta
from npuflow.v1 import common_pb2, worker_pb2

FR = common_pb2.FinishReason


class RequestStream:
    __slots__ = ("request_id", "n", "_pending", "_wake", "_finished", "worker_open")

    def __init__(self, request_id: str, n: int):
        self.request_id = request_id
        self.n = n
        self._pending: list[worker_pb2.TokenEvent] = []
        self._wake = asyncio.Event()
        self._finished: set[int] = set()   # choices whose last event arrived (or that failed)
        self.worker_open = n                # choices the worker has not finished itself

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    @property
    def finished(self) -> bool:
        return len(self._finished) >= self.n

    def put(self, ev: worker_pb2.TokenEvent) -> None:
        """Called by the receive loop for each event of this request."""
        if ev.index in self._finished:
            return
        if ev.finish_reason != FR.FINISH_REASON_UNSPECIFIED:
            self._finished.add(ev.index)
            self.worker_open -= 1
        self._pending.append(ev)
        self._wake.set()

    def fail(self, code: int, message: str) -> None:
        """End every unfinished choice with an error (worker lost, deadline)."""
        for i in range(self.n):
            if i not in self._finished:
                self._finished.add(i)
                ev = worker_pb2.TokenEvent(request_id=self.request_id, index=i,
                                           finish_reason=FR.FINISH_REASON_ERROR)
                ev.error.code = code
                ev.error.message = message
                self._pending.append(ev)
        self._wake.set()

    async def get(self) -> list[Delta]:
        """Everything new, one merged Delta per choice; waits when nothing arrived yet."""
        if not self._pending:
            self._wake.clear()
            await self._wake.wait()
        evs, self._pending = self._pending, []
        self._wake.clear()
        return merge(evs)


def merge(evs: list[worker_pb2.TokenEvent]) -> list[Delta]:
    out: dict[int, Delta] = {}
    for ev in evs:
        d = out.get(ev.index)
        if d is None:
            d = out[ev.index] = Delta(ev.index, ev.text, list(ev.token_ids), list(ev.logprobs))
        else:
            d.text += ev.text
            d.token_ids.extend(ev.token_ids)
            d.logprobs.extend(ev.logprobs)
        if ev.finish_reason != FR.FINISH_REASON_UNSPECIFIED:
            d.finish = ev.finish_reason
            d.prompt_tokens = ev.prompt_tokens
            d.completion_tokens = ev.completion_tokens
            d.cached_tokens = ev.cached_prompt_tokens
            d.stop_reason = ev.stop_reason
            if ev.finish_reason == FR.FINISH_REASON_ERROR:
                d.error = (ev.error.code, ev.error.message, ev.error.param)
    return list(out.values())
