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
from dataclasses import dataclass

from npuflow.gateway.bounded_store import BoundedStore
from npuflow.gateway.client import ChatTurn, ImagePart


@dataclass(frozen=True)
class Stored:
    response: dict                   # the response object as it was returned
    history: tuple[ChatTurn, ...]    # the conversation a continuation starts from (its input, then its output)
    input_items: tuple[dict, ...]    # its own input, as GET .../input_items lists it


def _size(response: dict, history: tuple[ChatTurn, ...], items: tuple[dict, ...]) -> int:
    n = len(json.dumps(response)) + len(json.dumps(items))
    for t in history:
        n += len(t.content) + sum(len(a) for c in t.tool_calls for a in c) + 64
        n += sum(len(p.data) for p in t.parts if isinstance(p, ImagePart))
    return n


class ResponseStore:
    def __init__(self, max_items: int, ttl_s: float, max_bytes: int, clock=time.monotonic):
        self._store: BoundedStore[Stored] = BoundedStore(max_items, ttl_s, max_bytes, clock)

    def __len__(self) -> int:
        return len(self._store)

    def put(self, response: dict, history: tuple[ChatTurn, ...], input_items: tuple[dict, ...] = ()) -> bool:
        """Keep it (False when it alone is larger than the byte bound, or storing is off)."""
        size = _size(response, history, input_items)
        return self._store.put(response["id"], Stored(response, history, input_items), size)

    def get(self, id_: str) -> Stored | None:
        return self._store.get(id_)

    def delete(self, id_: str) -> bool:
        return self._store.delete(id_)
