"""Entries by id held in memory within three bounds: at most `max_items` of them, none older
than `ttl_s`, at most `max_bytes` together (each entry's size is its owner's estimate). The
oldest go first. With `renew`, reading or rewriting an entry makes it the newest again (a store
of things in use, as conversations are); without, an entry ages from when it was put.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Generic, TypeVar

V = TypeVar("V")


class BoundedStore(Generic[V]):
    def __init__(self, max_items: int, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic,
                 renew: bool = False):
        self.max_items = max_items
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.renew = renew
        self._clock = clock
        self._items: OrderedDict[str, tuple[V, int, float]] = OrderedDict()   # id -> (value, size, since)
        self._bytes = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def put(self, id_: str, value: V, size: int) -> bool:
        """Keep value under id_ as the newest entry, evicting the oldest others to make room;
        False (and nothing kept, an older entry of id_ dropped) when it alone is over the byte
        bound or the store holds nothing."""
        self._drop(id_)
        if self.max_items <= 0 or size > self.max_bytes:
            return False
        self._items[id_] = (value, size, self._clock())
        self._bytes += size
        while len(self._items) > self.max_items or self._bytes > self.max_bytes:
            self._drop(next(iter(self._items)))
        return True

    def get(self, id_: str) -> V | None:
        self._expire()
        entry = self._items.get(id_)
        if entry is None:
            return None
        if self.renew:
            self._items[id_] = (entry[0], entry[1], self._clock())
            self._items.move_to_end(id_)
        return entry[0]

    def delete(self, id_: str) -> bool:
        self._expire()
        return self._drop(id_)

    def _drop(self, id_: str) -> bool:
        entry = self._items.pop(id_, None)
        if entry is None:
            return False
        self._bytes -= entry[1]
        return True

    def _expire(self) -> None:
        limit = self._clock() - self.ttl_s
        while self._items:
            first_id, (_, _, since) = next(iter(self._items.items()))
            if since >= limit:
                break
            self._drop(first_id)
