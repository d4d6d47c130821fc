"""The Conversations API's conversations: an id, metadata and a list of items (the Responses
API's item shapes, each with an id), which `conversation` on a response request starts from and
adds its input and output to.

Held in memory, bounded by the server settings `conversations_max`, `conversations_ttl_s` (since
the conversation was last read or changed) and `conversations_max_bytes` (the items' JSON, images
included); the least recently used go first, and a restart of the gateway forgets them.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from npuflow.gateway.bounded_store import BoundedStore


def items_size(items: list[dict]) -> int:
    """What items count against conversations_max_bytes: their JSON."""
    return sum(len(json.dumps(it)) + 2 for it in items)


@dataclass
class Conversation:
    id: str
    created_at: int
    metadata: dict
    items: list[dict] = field(default_factory=list)    # oldest first: change them with extend / remove
    _items_size: int = field(default=0, init=False, repr=False)   # items_size(items), kept as they change

    def __post_init__(self) -> None:
        self._items_size = items_size(self.items)

    def resource(self) -> dict:
        return {"id": self.id, "object": "conversation", "created_at": self.created_at, "metadata": self.metadata}

    def size(self) -> int:
        return self._items_size + len(json.dumps(self.metadata)) + 64

    def extend(self, items: list[dict]) -> None:
        self.items.extend(items)
        self._items_size += items_size(items)

    def remove(self, item: dict) -> None:
        self.items.remove(item)
        self._items_size -= items_size([item])

    def item(self, item_id_: str) -> dict | None:
        return next((it for it in self.items if it.get("id") == item_id_), None)


class ConversationStore:
    def __init__(self, max_items: int, ttl_s: float, max_bytes: int, clock=time.monotonic):
        self._store: BoundedStore[Conversation] = BoundedStore(max_items, ttl_s, max_bytes, clock, renew=True)

    def __len__(self) -> int:
        return len(self._store)

    def new(self, metadata: dict, items: list[dict]) -> Conversation:
        return Conversation(f"conv_{uuid.uuid4().hex}", int(time.time()), metadata, list(items))

    def fits(self, conv: Conversation, more: list[dict] = ()) -> bool:
        """Whether conv with `more` items added is within the byte bound on its own."""
        return conv.size() + items_size(list(more)) <= self._store.max_bytes

    def save(self, conv: Conversation) -> bool:
        """Keep conv (new or changed) as the most recently used; False when it alone is over the
        byte bound or conversations are off."""
        return self._store.put(conv.id, conv, conv.size())

    def get(self, id_: str) -> Conversation | None:
        return self._store.get(id_)

    def add(self, id_: str, items: list[dict]) -> bool:
        """Append items to a conversation; False (the conversation as it was) when it is gone or
        would be over the byte bound with them."""
        conv = self._store.get(id_)
        if conv is None or not self.fits(conv, items):
            return False
        conv.extend(items)
        return self.save(conv)

    def delete(self, id_: str) -> bool:
        return self._store.delete(id_)
