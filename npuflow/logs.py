"""Structured log lines: `ts=... level=... service=... msg="..." key=value ...` on stderr.

    log = get_logger("worker")
    log.info("model loaded", model="smollm2", seconds=1.2)
"""
from __future__ import annotations

import logging
import sys
import time

_configured = False


def _fmt(v: object) -> str:
    s = str(v)
    if not s or any(c in s for c in ' "=\n'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"service={record.name.removeprefix('npuflow.')}",
                 f"msg={_fmt(record.getMessage())}"]
        parts += [f"{k}={_fmt(v)}" for k, v in getattr(record, "kv", {}).items()]
        if record.exc_info:
            parts.append("exc=" + _fmt(self.formatException(record.exc_info)))
        return " ".join(parts)


def setup_logging(level: str = "info") -> None:
    """Send every npuflow logger to stderr in the structured format (idempotent)."""
    global _configured
    root = logging.getLogger("npuflow")
    root.setLevel(level.upper())
    if not _configured:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_Formatter())
        root.addHandler(h)
        root.propagate = False
        _configured = True


class Logger:
    """A thin wrapper that takes key=value fields as keyword arguments."""

    def __init__(self, name: str):
        self._log = logging.getLogger("npuflow." + name)

    def _emit(self, level: int, msg: str, exc_info: bool, kv: dict) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, msg, exc_info=exc_info, extra={"kv": kv}, stacklevel=3)

    def debug(self, msg: str, **kv) -> None:
        self._emit(logging.DEBUG, msg, False, kv)

    def info(self, msg: str, **kv) -> None:
        self._emit(logging.INFO, msg, False, kv)

    def warning(self, msg: str, **kv) -> None:
        self._emit(logging.WARNING, msg, False, kv)

    def error(self, msg: str, exc_info: bool = False, **kv) -> None:
        self._emit(logging.ERROR, msg, exc_info, kv)


def get_logger(name: str) -> Logger:
    return Logger(name)
