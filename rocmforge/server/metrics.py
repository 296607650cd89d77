"""/metrics: Prometheus text, with vLLM's metric names so existing dashboards read it.

Engine-side numbers (running, waiting, KV usage, token and prefix-cache counters)
are read from ``engine.stats()`` at scrape time by a custom collector, so they are
never stale and the engine keeps no Prometheus state. Latencies only the face can
see (time to first token, between tokens, end to end) are histograms it observes.
Each app has its own registry: two servers in one process (tests) never share.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)


class _EngineCollector:
    def __init__(self, engine, model_name: str):
        self.engine, self.model_name = engine, model_name

    def collect(self):
        s = self.engine.stats()
        labels = {"model_name": self.model_name}

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc, labels=list(labels))
            g.add_metric(list(labels.values()), float(value))
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(name, doc, labels=list(labels))
            c.add_metric(list(labels.values()), float(value))
            return c

        yield gauge("vllm:num_requests_running", "Requests in the running batch.", s.running)
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", s.waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage: 1 means every block is in use.", s.kv_usage)
        yield gauge("rocmforge:kv_blocks_total", "KV-cache blocks in the pool.", s.kv_blocks_total)
        yield gauge("rocmforge:kv_blocks_used", "KV-cache blocks held by requests.", s.kv_blocks_used)
        yield counter("vllm:num_preemptions", "Requests preempted (recomputed later).", s.preempted_total)
        yield counter("vllm:prompt_tokens", "Prompt tokens processed.", s.prompt_tokens_total)
        yield counter("vllm:generation_tokens", "Tokens generated.", s.generation_tokens_total)
        yield counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      s.prefix_queries_total)
        yield counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_hits_total)
        for key, value in sorted(s.extra.items()):
            yield gauge("rocmforge:" + re.sub(r"[^a-zA-Z0-9_]", "_", key), f"engine: {key}", value)


class Metrics:
    def __init__(self, engine, model_name: str):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        kw = dict(labelnames=["model_name"], registry=self.registry)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.",
                              buckets=_TTFT_BUCKETS, **kw).labels(model_name)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Time between generated tokens.",
                             buckets=_ITL_BUCKETS, **kw).labels(model_name)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Request latency, arrival to last token.",
                             buckets=_E2E_BUCKETS, **kw).labels(model_name)
        self._success = Counter("vllm:request_success", "Finished requests by finish reason.",
                                labelnames=["model_name", "finished_reason"], registry=self.registry)
        self.registry.register(_EngineCollector(engine, model_name))

    def finished(self, reason: str) -> None:
        self._success.labels(self.model_name, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
