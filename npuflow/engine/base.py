"""The interface every model engine implements (CPU via onnxruntime, AX via pyaxengine).

An engine owns a fixed number of KV slots. A sequence lives in one slot from its prefill until
it is released. Positions are tracked by the engine: prefill appends tokens after what the slot
already holds, decode appends one token to each named slot.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class EngineError(Exception):
    """A request the engine cannot serve (bad ids, no room in the context); message is one line."""


def check_slot(slot: int, max_slots: int, closed: bool) -> None:
    """Raise EngineError unless `slot` names a slot of an open engine."""
    if closed:
        raise EngineError("engine is closed")
    if not 0 <= slot < max_slots:
        raise EngineError(f"slot {slot} out of range 0..{max_slots - 1}")


def check_truncate(length: int, held: int) -> None:
    if not 0 <= length <= held:
        raise EngineError(f"cannot keep {length} tokens of a slot holding {held}")


def check_token_ids(token_ids: Sequence[int], vocab_size: int) -> np.ndarray:
    """The ids as a flat int64 array; EngineError for anything else or an id outside the vocabulary."""
    ids = np.asarray(token_ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise EngineError("token ids must be a flat list of integers")
    ids = ids.astype(np.int64)
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise EngineError(f"token id {int(bad[0])} is outside the vocabulary (0..{vocab_size - 1})")
    return ids


def check_embeds(embeds, n: int, hidden: int) -> tuple[np.ndarray, np.ndarray] | None:
    """prefill's `embeds` (None or (rows, values)) for a prompt of n tokens as (int64 [k],
    float32 [k, hidden]) sorted by row; EngineError for a row outside 0..n-1 or named twice,
    values of another shape than [len(rows), hidden], or non-finite values."""
    if embeds is None:
        return None
    try:
        rows, values = embeds
    except (TypeError, ValueError):
        raise EngineError("embeds must be a pair (rows, values)") from None
    rows, values = np.asarray(rows), np.asarray(values)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise EngineError("embeds rows must be a flat array of integers")
    if values.ndim != 2 or values.shape != (rows.size, hidden) or not np.issubdtype(values.dtype, np.floating):
        raise EngineError(f"embeds values must be float [{rows.size}, {hidden}] (one row per position), "
                          f"got {values.dtype} {list(values.shape)}")
    rows = rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        bad = int(rows[(rows < 0) | (rows >= n)][0])
        raise EngineError(f"embeds row {bad} is outside the prompt's positions 0..{n - 1}")
    order = np.argsort(rows, kind="stable")
    rows, values = rows[order], values[order].astype(np.float32)
    if rows.size > 1 and (np.diff(rows) == 0).any():
        raise EngineError(f"embeds names row {int(rows[1:][np.diff(rows) == 0][0])} twice")
    if not np.isfinite(values).all():
        raise EngineError("embeds values must be finite")
    return rows, values


class Engine(Protocol):
    vocab_size: int       # rows of the logits
    context_length: int   # positions a slot can hold
    max_slots: int        # sequences that can be alive at once
    prefill_align: int    # prefill runs in chunks of this many positions (1: any length costs its own)

    def prefill(self, slot: int, token_ids: Sequence[int], all_logits: bool = False,
                embeds: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Append token_ids to the slot's sequence and return float32 logits: [vocab] for the last
        token, or [len(token_ids), vocab] with all_logits. Raises EngineError for an empty list,
        an id outside the vocabulary, or more tokens than the slot has room for.
        embeds (vision-language models): None or (rows int64 [k], values float32 [k, hidden]);
        positions `rows` of this token_ids (0 = its first token, not the slot's position) take
        `values` as their input embedding instead of their token's table row (the AX engine
        rounds them to bf16 like the table). The ids themselves stay (e.g. the image token).
        EngineError for a row outside 0..len(token_ids)-1 or named twice, or values not
        [k, hidden] (check_embeds)."""
        ...

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """Append one token to each slot (token_ids[i] to slots[i]) and return float32 logits
        [len(slots), vocab]. Raises EngineError when a slot is full."""
        ...

    def release(self, slot: int) -> None:
        """Forget the slot's sequence; the slot can be reused at once."""
        ...

    def truncate(self, slot: int, length: int) -> None:
        """Keep the first `length` tokens of the slot's sequence (their KV entries stay valid) and
        forget the rest; the next prefill appends after them. EngineError if the slot holds fewer."""
        ...

    def length(self, slot: int) -> int:
        """Tokens the slot currently holds."""
        ...

    def close(self) -> None:
        """Free every runtime resource (sessions, device memory). Safe to call twice."""
        ...
