"""Stop strings over streamed text: nothing at or after a stop string is ever released.

Text is held back while its tail could still become a stop string, so a stop string split
across tokens is caught and never leaks out in pieces.
"""
from __future__ import annotations

from typing import Sequence

MAX_STOP_STRINGS = 4


class StopMatcher:
    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in dict.fromkeys(stops) if s)
        self._held = ""

    def _holdback(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def push(self, text: str) -> tuple[str, str | None]:
        """(text that is safe to release, the stop string matched or None)."""
        if not self.stops:
            return text, None
        buf = self._held + text
        hit, where = None, len(buf)
        for s in self.stops:
            i = buf.find(s)
            if 0 <= i < where:
                hit, where = s, i
        if hit is not None:
            self._held = ""
            return buf[:where], hit
        keep = self._holdback(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], None

    def flush(self) -> str:
        """Release the held-back tail (the answer ended without a stop string)."""
        out, self._held = self._held, ""
        return out
