"""The gateway's store of responses made with `store` (the Responses API's default): what
`GET /v1/responses/{id}` returns and what `previous_response_id` continues.

Bounded three ways (server settings): at most `responses_store_max` responses, none older than
`responses_store_ttl_s`, and at most `responses_store_max_bytes` of them together (their JSON
and the conversation they hold, images included); the oldest go first. Held in memory: a restart
of the gateway forgets them, and an id that is gone is reported as unknown.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass

from npuflow.gateway.client import ChatTurn, ImagePart


@dataclass(frozen=True)
class Stored:
    response: dict                   # the response object as it was returned
    history: tuple[ChatTurn, ...]    # the conversation a continuation starts from (its input, then its output)
    input_items: tuple[dict, ...]    # its own input, as GET .../input_items lists it
    size: int
    at: float


def _size(response: dict, history: tuple[ChatTurn, ...], items: tuple[dict, ...]) -> int:
    n = len(json.dumps(response)) + len(json.dumps(items))
    for t in history:
        n += len(t.content) + sum(len(a) for c in t.tool_calls for a in c) + 64
        n += sum(len(p.data) for p in t.parts if isinstance(p, ImagePart))
    return n


class ResponseStore:
    def __init__(self, max_items: int, ttl_s: float, max_bytes: int, clock=time.monotonic):
        self.max_items = max_items
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, Stored] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def put(self, response: dict, history: tuple[ChatTurn, ...], input_items: tuple[dict, ...] = ()) -> bool:
        """Keep it (False when it alone is larger than the byte bound, or storing is off)."""
        if self.max_items <= 0:
            return False
        size = _size(response, history, input_items)
        if size > self.max_bytes:
            return False
        self._drop(response["id"])
        self._items[response["id"]] = Stored(response, history, input_items, size, self._clock())
        self._bytes += size
        while len(self._items) > self.max_items or self._bytes > self.max_bytes:
            self._drop(next(iter(self._items)))
        return True

    def get(self, id_: str) -> Stored | None:
        self._expire()
        return self._items.get(id_)

    def delete(self, id_: str) -> bool:
        self._expire()
        return self._drop(id_)

    def _drop(self, id_: str) -> bool:
        s = self._items.pop(id_, None)
        if s is None:
            return False
        self._bytes -= s.size
        return True

    def _expire(self) -> None:
        limit = self._clock() - self.ttl_s
        while self._items:
            first = next(iter(self._items.values()))
            if first.at >= limit:
                break
            self._drop(first.response["id"])
