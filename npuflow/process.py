"""What every service process does first: name itself, die with its parent, log its start; and
how a threaded service stops on SIGTERM/SIGINT (stop_on_signals)."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

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


def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> threading.Event:
    """An event that is set when one of `signals` arrives. The handler only writes a byte to a
    pipe and a thread sets the event: Event.set takes a lock, so a handler calling it deadlocks
    when a second signal comes while the first is inside set() (a tokenizer hung so, sent SIGTERM
    by its dying parent and again by a stop)."""
    stop = threading.Event()
    r, w = os.pipe()
    os.set_blocking(w, False)

    def handler(*_) -> None:
        try:
            os.write(w, b"\0")
        except BlockingIOError:     # the pipe is full: the relay has bytes enough to wake on
            pass

    def relay() -> None:
        os.read(r, 1)
        stop.set()

    threading.Thread(target=relay, name="signal-relay", daemon=True).start()
    for sig in signals:
        signal.signal(sig, handler)
    return stop
