"""One model's worker: continuous batching over an Engine, sampling, stop strings, detokenizing.

    run_worker(settings, model)          # the process entry
    build_link(engine, package, model)   # scheduler + socket loop around any Engine

The names below are imported on first use (PEP 562), not with the package: the worker process
imports what it serves with beside its model's load (run.py), not before it.
"""
from __future__ import annotations

import importlib

_WHERE = {"IncrementalDetokenizer": "detok", "TokenTable": "detok", "load_token_table": "detok",
          "build_link": "run", "run_worker": "run", "Scheduler": "scheduler", "StopMatcher": "stop"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
