"""Handing the heap's free pages back to the system when the worker goes idle.

A burst of requests leaves glibc's heaps (one arena per thread that allocates: the scheduler,
the socket thread, onnxruntime's and llguidance's threads) with free chunks spread among live
ones; glibc returns only the top of a heap by itself, so the process keeps the burst's peak as
RSS. `malloc_trim(0)` gives back every free page of every arena. IdleTrim calls it once when
the scheduler runs out of work (not more often than every MIN_INTERVAL_S), where its few
milliseconds delay no token; the tokenizer calls `trim_heap` after each big request.
`limit_arenas` caps the number of heaps at the worker's start. Without glibc (musl, macOS)
these do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import time

MIN_INTERVAL_S = 2.0


M_ARENA_MAX = -8   # glibc's mallopt parameter
ARENAS = 2         # the scheduler and the socket thread; onnxruntime keeps its own arena


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_arenas(n: int = ARENAS) -> None:
    """Cap glibc's heaps at n (default 8 per core): the threads started after this share them,
    so a burst's garbage is not spread over a heap per thread. Call before the engine starts."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(n))


def _malloc_trim():
    fn = getattr(_libc(), "malloc_trim", None)
    if fn is None:
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_TRIM = _malloc_trim()


def trim_heap() -> None:
    """Give every free heap page back to the system now (nothing without glibc)."""
    if _TRIM is not None:
        _TRIM(0)


class IdleTrim:
    def __init__(self) -> None:
        self._trim = _TRIM
        self._busy = False
        self._last = 0.0

    def __call__(self, busy: bool) -> None:
        """Called once per loop of the scheduler thread with whether it has work."""
        if busy:
            self._busy = True
            return
        if self._busy and self._trim is not None and time.monotonic() - self._last >= MIN_INTERVAL_S:
            self._busy = False
            self._trim(0)
            self._last = time.monotonic()
