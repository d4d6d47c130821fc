"""Prometheus metrics of one gateway app (its own registry, no process globals)."""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (.001, .0025, .005, .01, .02, .04, .08, .16, .32, .64, 1.28, 2.56)


class _LinkCollector:
    """In-flight, queued and restarts per model, read from the model client at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, dict[str, int]]]):
        self._stats = stats

    def collect(self):
        inflight = GaugeMetricFamily("npuflow_requests_in_flight", "Requests the gateway waits on", labels=["model"])
        queued = GaugeMetricFamily("npuflow_requests_queued", "Requests queued in the worker (last heartbeat)",
                                   labels=["model"])
        running = GaugeMetricFamily("npuflow_worker_running", "Sequences in the worker's batch (last heartbeat)",
                                    labels=["model"])
        restarts = CounterMetricFamily("npuflow_worker_restarts", "Worker restarts seen (new worker_id)",
                                       labels=["model"])
        for model, s in self._stats().items():
            inflight.add_metric([model], s.get("in_flight", 0))
            queued.add_metric([model], s.get("queued", 0))
            running.add_metric([model], s.get("running", 0))
            restarts.add_metric([model], s.get("restarts", 0))
        return [inflight, queued, running, restarts]


class Metrics:
    def __init__(self, stats: Callable[[], dict[str, dict[str, int]]], collectors: tuple = ()):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("npuflow_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.ttft = Histogram("npuflow_time_to_first_token_seconds", "Request arrival to first token",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("npuflow_inter_token_seconds", "Time between tokens of one choice",
                             ["model"], buckets=_ITL_BUCKETS, registry=r)
        self.tokens = Counter("npuflow_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.prompt_tokens = Counter("npuflow_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.cached_prompt_tokens = Counter("npuflow_cached_prompt_tokens",
                                            "Prompt tokens whose KV a worker slot already held (not computed again)",
                                            ["model"], registry=r)
        self.embedding_inputs = Counter("npuflow_embedding_inputs", "Inputs embedded", ["model"], registry=r)
        self.embedding_seconds = Histogram("npuflow_embedding_seconds", "Embeddings request arrival to its vectors",
                                           ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        r.register(_LinkCollector(stats))
        for c in collectors:      # e.g. the model lifecycle's (lifecycle_metrics.py)
            r.register(c)

    def render(self) -> bytes:
        return generate_latest(self.registry)
