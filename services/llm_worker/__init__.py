"""One model's worker: continuous batching over an Engine, sampling, stop strings, detokenizing.

    run_worker(settings, model)          # the process entry
    build_link(engine, package, model)   # scheduler + socket loop around any Engine
"""
from .detok import IncrementalDetokenizer, TokenTable, load_token_table
from .run import build_link, run_worker
from .scheduler import Scheduler
from .stop import StopMatcher

__all__ = ["IncrementalDetokenizer", "Scheduler", "StopMatcher", "TokenTable", "build_link", "load_token_table",
           "run_worker"]
