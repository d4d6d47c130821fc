"""Loading a model at low CPU priority, so that the models already serving keep their speed.

With load on demand (issue 12) a worker starts while other workers are decoding on the same few
cores. A load is a burst of CPU (the sha256 check of the package, onnxruntime's graph
optimisation, the token table) that, at the same priority, takes its share of the cores from
the decoding workers for as long as it lasts. At nice 19 the scheduler gives it what they leave
idle instead, and a decoding thread that wakes up preempts it at once.

Linux applies nice values per thread (setpriority(PRIO_PROCESS, tid) acts on one task) and a
new thread inherits the value of the thread that creates it. So `lower_priority` sets every
thread of the process, and the threads started during the load (onnxruntime's pool, the loader
threads of run.py) are born low; `restore_priority` walks /proc/self/task again and gives every
thread, new ones included, its value from before the load (new ones: the main thread's).
Threads that take no part in the load are affected too while it lasts: the worker has none that
serve anything before its model is loaded.

Raising a priority back needs CAP_SYS_NICE or an RLIMIT_NICE that allows the old value; a user
without either could lower it but never restore it, and the worker would serve at nice 19 for
good. In that case nothing is changed and one line says why.

At most for LOW_PRIORITY_MAX_S, though. A CPU engine decoding with threads = cores keeps every
core busy (onnxruntime's pool spins between its steps), and a load at nice 19 beside it gets
almost nothing: without a bound it would wait for as long as the others stream (12 to 35 s in
the measurement below, for a load of 0.8 s), and under steady traffic for ever.

Measured on the 2-core development VM (x86_64, shared; medians of 3 rounds of 10 s each), the
default model (SmolLM2-135M, threads = 2, on the CPU engine) on both sides:

  real workers: worker "a" streams greedy 1500-token answers without pause while worker "b" (the
  same package) is started again and again (Popen, ping until Hello, SIGTERM, 0.3 s pause); the
  per-token gaps of "a" within b's loads; b at normal priority ran under
  `setpriv --bounding-set=-sys_nice --inh-caps=-sys_nice` (so lower_priority declines):
      per token: idle 9.7 ms; b at normal priority 33.9 ms (3.5x); b at nice 19 10.7 ms (1.10x)
      b's Popen -> Hello meanwhile: 0.84 s at normal priority, 5.7 s at nice 19 (the 5 s cap;
      uncapped it was 12-35 s); with nothing else running: 0.47 s at nice 19, 0.46 s without
  in one interpreter each: a tight loop of engine.decode steps (one slot) against a process
  that runs load_package, build_engine and one prefill in a loop (0.3 s apart):
      per token: idle 9.1 ms; loader at normal priority 22.5 ms (2.5x); at nice 19 9.4 ms (1.03x)
      the loader's load meanwhile: 0.48 s at normal priority, 4.6 s at nice 19
bench/lifecycle.py measures the same from the gateway's side (a stream while another model is
loaded and unloaded).
"""
from __future__ import annotations

import os
import resource
import threading
from dataclasses import dataclass, field

from npuflow.logs import get_logger

log = get_logger("worker")

LOW_NICE = 19
LOW_PRIORITY_MAX_S = 5.0   # a load still running after this long goes on at its normal priority
_CAP_SYS_NICE = 23         # bit in /proc/self/status CapEff


@dataclass
class Lowered:
    """What `restore_priority` needs to undo `lower_priority`."""
    nice: int                                              # the main thread's value before the load
    before: dict[int, int] = field(default_factory=dict)   # thread id -> its value before the load
    timer: threading.Timer | None = None                   # restores at LOW_PRIORITY_MAX_S


def thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


def has_cap_sys_nice() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def can_restore(nice: int) -> bool:
    """Whether this process may raise a thread's priority back to `nice` after lowering it:
    CAP_SYS_NICE, or RLIMIT_NICE's soft limit (a nice floor of 20 - limit) at or below it."""
    if has_cap_sys_nice():
        return True
    soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    return soft == resource.RLIM_INFINITY or 20 - soft <= nice


def _nice_of(tid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:       # the thread has ended
        return None


def _set_nice(tid: int, nice: int) -> bool:
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        return True
    except OSError:       # ended, or (not expected after can_restore) not permitted
        return False


def lower_priority(max_s: float = LOW_PRIORITY_MAX_S) -> Lowered | None:
    """Set every thread of the process to nice LOW_NICE, for at most max_s seconds; None (and
    one log line) when the priority could not be restored afterwards, or the platform has no
    per-thread priorities."""
    main = _nice_of(0)
    tids = thread_ids()
    if main is None or not tids:
        log.info("loading at normal CPU priority: no per-thread priorities here")
        return None
    if main >= LOW_NICE:
        return None
    if not can_restore(main):
        log.warning("loading at normal CPU priority: the priority could not be raised back afterwards "
                    "(needs CAP_SYS_NICE or RLIMIT_NICE)", nice=main, rlimit_nice=resource.getrlimit(resource.RLIMIT_NICE)[0])
        return None
    saved = Lowered(nice=main)
    # Started first, so that it keeps the normal priority: at nice 19 on busy cores it could be late.
    saved.timer = threading.Timer(max_s, _time_is_up, (saved, max_s))
    saved.timer.daemon = True
    saved.timer.start()
    for tid in tids:
        nice = _nice_of(tid)
        if nice is not None and nice < LOW_NICE and can_restore(nice) and _set_nice(tid, LOW_NICE):
            saved.before[tid] = nice
    log.info("loading at low CPU priority", nice=LOW_NICE, threads=len(saved.before), at_most_s=max_s)
    return saved


def _time_is_up(saved: Lowered, max_s: float) -> None:
    """While other workers keep every core busy (a CPU engine decoding with threads = cores),
    a load at nice 19 gets almost no CPU and would wait for as long as they are busy; past
    max_s it takes its normal share, so that a load on demand ends in bounded time."""
    n = restore_priority(saved, cancel=False)
    log.warning("the load is still running at low CPU priority: it goes on at normal priority",
                after_s=max_s, threads=n)


def restore_priority(saved: Lowered | None, *, cancel: bool = True) -> int:
    """Give every thread of the process its priority from before `lower_priority` (threads
    started since: the main thread's); returns how many were changed. Passes over the threads
    until one changes nothing, so a thread started during a pass is not missed. Doing it again
    changes nothing."""
    if saved is None:
        return 0
    if cancel and saved.timer is not None:
        saved.timer.cancel()
    changed = 0
    for _ in range(5):
        n = 0
        for tid in thread_ids():
            want = saved.before.get(tid, saved.nice)
            now = _nice_of(tid)
            if now is not None and now != want and _set_nice(tid, want):
                n += 1
        changed += n
        if not n:
            break
    return changed
