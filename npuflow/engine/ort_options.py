"""The onnxruntime session options every CPU session here uses: a fixed number of intra-op
threads, no inter-op parallelism (the graphs are one chain), quiet logs."""
from __future__ import annotations

import onnxruntime as ort


def session_options(threads: int, level: "ort.GraphOptimizationLevel | None" = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if level is not None:
        opts.graph_optimization_level = level
    opts.log_severity_level = 3
    return opts
