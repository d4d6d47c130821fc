"""The model lifecycle's Prometheus metrics: loads, unloads by reason, load time, models loaded,
the memory budget and its use per pool, each model's footprint and state.

Counters and the histogram are kept here (not registered anywhere); `collect` hands them, and
the gauges read from the manager at scrape time, to the app's registry (metrics.py).
"""
from __future__ import annotations

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

LOAD_BUCKETS = (0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
STATES = ("loaded", "loading", "unloaded", "failed")


class LifecycleMetrics:
    def __init__(self, manager):
        self._m = manager
        self.loads = Counter("npuflow_model_loads", "Model loads by result (ok, failed)", ["model", "result"],
                             registry=None)
        self.unloads = Counter("npuflow_model_unloads", "Model unloads by reason (keep_alive: idle; evicted: room "
                               "for another model under the memory budget; request: POST /models/unload or "
                               "gRPC UnloadModel; exited: its worker exited by itself)", ["model", "reason"],
                               registry=None)
        self.load_seconds = Histogram("npuflow_model_load_seconds", "A model load, from the request for it to "
                                      "its worker's Hello (room made, process started, model loaded)", ["model"],
                                      buckets=LOAD_BUCKETS, registry=None)

    def loaded(self, slot, seconds: float | None) -> None:
        self.loads.labels(slot.id, "ok").inc()
        if seconds is not None:
            self.load_seconds.labels(slot.id).observe(seconds)

    def load_failed(self, slot) -> None:
        self.loads.labels(slot.id, "failed").inc()

    def unloaded(self, slot, reason: str) -> None:
        self.unloads.labels(slot.id, reason).inc()

    def collect(self):
        yield from self.loads.collect()
        yield from self.unloads.collect()
        yield from self.load_seconds.collect()
        slots = list(self._m.slots.values())
        loaded = GaugeMetricFamily("npuflow_models_loaded", "Models loaded now")
        loaded.add_metric([], sum(1 for s in slots if s.state in ("loaded", "unloading")))
        state = GaugeMetricFamily("npuflow_model_state", "1 for the state each model is in", labels=["model", "state"])
        foot = GaugeMetricFamily("npuflow_model_footprint_bytes", "The memory a model holds when loaded",
                                 labels=["model", "pool"])
        for s in slots:
            for name in STATES:
                state.add_metric([s.id, name], 1 if s.public_state == name else 0)
            foot.add_metric([s.id, s.footprint.pool], s.footprint.bytes)
        total = GaugeMetricFamily("npuflow_memory_budget_bytes", "The memory budget per pool (absent: no budget)",
                                  labels=["pool"])
        used = GaugeMetricFamily("npuflow_memory_used_bytes", "The footprints of the models holding memory, per pool",
                                 labels=["pool"])
        pools = sorted({s.footprint.pool for s in slots} | set(self._m.budget.totals))
        for pool in pools:
            t = self._m.budget.total(pool)
            if t is not None:
                total.add_metric([pool], t)
            used.add_metric([pool], sum(s.footprint.bytes for s in slots if s.reserved and s.footprint.pool == pool))
        yield from (loaded, state, foot, total, used)
