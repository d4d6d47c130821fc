"""What every service process does first: name itself, die with its parent, log its start."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

from npuflow.logs import get_logger, setup_logging

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent exits (Linux; no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def start_process(role: str, log_level: str = "info", detail: str = "") -> None:
    """Set the process title to `npuflow-<role>[ detail]`, arrange to die with the parent when
    started by the supervisor (NPUFLOW_SUPERVISED=1), and set up structured logging."""
    setup_logging(log_level)
    try:
        import setproctitle
        setproctitle.setproctitle(f"npuflow-{role}" + (f" {detail}" if detail else ""))
    except ImportError:
        pass
    if os.environ.get("NPUFLOW_SUPERVISED") == "1":
        die_with_parent()
    get_logger(role).info("starting", pid=os.getpid(), detail=detail)
