"""Prometheus metrics for one server (its own registry: no process-global state).

Request/token counters and latency histograms are recorded at the dispatch boundary; queue
depth, running sequences and KV-cache use are read from the engine when scraped."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("fleetlm_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("fleetlm_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("fleetlm_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("fleetlm_time_to_first_token_seconds", "Time to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("fleetlm_time_per_output_token_seconds", "Mean time per output token after the first",
                              buckets=TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("fleetlm_request_latency_seconds", "End-to-end request latency",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.waiting = Gauge("fleetlm_num_requests_waiting", "Sequences waiting for admission", registry=r)
        self.running = Gauge("fleetlm_num_requests_running", "Sequences running in the engine", registry=r)
        self.kv_usage = Gauge("fleetlm_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use", registry=r)
        self.pending = Gauge("fleetlm_num_requests_pending", "HTTP generation requests in flight", registry=r)
        self.routed = Counter("fleetlm_routed_requests", "Requests a router sent to each model",
                              ["router", "model"], registry=r)
        self.model_tokens = Counter("fleetlm_model_tokens", "Tokens per served model (upstreams)",
                                    ["model", "kind"], registry=r)
        self.cost = Counter("fleetlm_cost_usd", "Cost in USD per served model, from its configured prices",
                            ["model"], registry=r)
        self.prefix_hit = Gauge("fleetlm_prefix_cache_hit_ratio", "Prompt tokens served from the prefix cache",
                                registry=r)

    def bind_engine(self, engine) -> None:
        """Gauges read live engine state when scraped (plain int reads; safe across threads)."""
        self.waiting.set_function(lambda: len(engine.scheduler.waiting))
        self.running.set_function(lambda: len(engine.scheduler.running))
        self.kv_usage.set_function(lambda: engine.kv.usage)
        self.prefix_hit.set_function(lambda: engine.kv.hits / engine.kv.queries if engine.kv.queries else 0.0)

    def observe_request(self, endpoint: str, outputs: Iterable, prompt_tokens: int, completion_tokens: int,
                        t0: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        now = time.monotonic()
        self.e2e.observe(now - t0)
        for out in outputs:
            m = out.metrics
            if m is None or m.first_token_time is None:
                continue
            self.ttft.observe(max(0.0, m.first_token_time - m.arrival_time))
            n = max(len(c.token_ids) for c in out.outputs)
            if n > 1 and m.finished_time:
                self.tpot.observe((m.finished_time - m.first_token_time) / (n - 1))

    def record_usage(self, model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        self.model_tokens.labels(model, "prompt").inc(prompt_tokens)
        self.model_tokens.labels(model, "completion").inc(completion_tokens)
        self.cost.labels(model).inc(cost_usd)

    def render(self) -> bytes:
        return generate_latest(self.registry)
