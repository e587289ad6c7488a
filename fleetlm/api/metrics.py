"""Prometheus metrics for one server (its own registry: no process-global state), and the
per-model ledger every request is recorded in once, at dispatch.

`record(RequestRecord)` counts one request whatever path served it (local engine, adapter,
upstream, router, pool, compound program): under the model id the client asked for and
under the model that served it, with the tokens and cost the client was told; a compound
request's sub-calls are counted under the program that made them. Queue depth, running
sequences and KV-cache use are read from the engine (`AsyncLLM.stats()`) when scraped."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fleetlm.openai.chunks import SubCall, Timing, Usage

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


@dataclass
class RequestRecord:
    """One chat or completion request, as dispatch saw it end."""

    endpoint: str  # "chat" | "completions"
    model: str  # the model id the client asked for
    served_by: str  # the model that answered ("" if none did)
    status: int  # 200, an error's status, or 499 for a client that went away
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    timing: Timing | None = None  # engine-side TTFT / TPOT, when a local engine served
    calls: list[SubCall] = field(default_factory=list)  # a compound program's sub-calls


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("fleetlm_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("fleetlm_prompt_tokens", "Prompt tokens of answered requests", registry=r)
        self.generation_tokens = Counter("fleetlm_generation_tokens", "Tokens generated for answered requests",
                                         registry=r)
        self.ttft = Histogram("fleetlm_time_to_first_token_seconds", "Time to first token (engine)",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("fleetlm_time_per_output_token_seconds", "Mean time per output token after the first",
                              buckets=TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("fleetlm_request_latency_seconds", "End-to-end request latency",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.waiting = Gauge("fleetlm_num_requests_waiting", "Sequences waiting for admission", registry=r)
        self.running = Gauge("fleetlm_num_requests_running", "Sequences running in the engine", registry=r)
        self.kv_usage = Gauge("fleetlm_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use", registry=r)
        self.prefix_hit = Gauge("fleetlm_prefix_cache_hit_ratio", "Prompt tokens served from the prefix cache",
                                registry=r)
        self.pending = Gauge("fleetlm_num_requests_pending", "Generation requests admitted and in flight", registry=r)
        # the ledger: asked model and served model, tokens and cost, per request
        self.model_requests = Counter("fleetlm_model_requests", "Requests by the model id asked for and the "
                                      "model that served", ["model", "served_by", "status"], registry=r)
        self.model_tokens = Counter("fleetlm_model_tokens", "Tokens per served model", ["model", "kind"],
                                    registry=r)
        self.asked_tokens = Counter("fleetlm_requested_model_tokens", "Tokens per model id asked for",
                                    ["model", "kind"], registry=r)
        self.cost = Counter("fleetlm_cost_usd", "Cost in USD per served model, from its configured prices",
                            ["model"], registry=r)
        self.routed = Counter("fleetlm_routed_requests", "Requests a router or pool sent to each model",
                              ["router", "model"], registry=r)
        self.program_calls = Counter("fleetlm_program_calls", "Sub-calls of compound programs, by program "
                                     "and the model that served them", ["program", "model"], registry=r)
        self.program_tokens = Counter("fleetlm_program_call_tokens", "Tokens of compound programs' sub-calls",
                                      ["program", "model", "kind"], registry=r)

    def bind_engines(self, llms: list) -> None:
        """Gauges read the local engines' stats when scraped: sequences summed over the
        engines, the KV-cache and prefix-hit ratios averaged (none: the gauges stay 0)."""
        if not llms:
            return

        def total(field):
            return lambda: sum(getattr(llm.stats(), field) for llm in llms)

        def mean(field):
            return lambda: sum(getattr(llm.stats(), field) for llm in llms) / len(llms)

        self.waiting.set_function(total("waiting"))
        self.running.set_function(total("running"))
        self.kv_usage.set_function(mean("kv_usage"))
        self.prefix_hit.set_function(mean("prefix_hit_ratio"))

    def record(self, rec: RequestRecord, *, admitted: bool = True) -> None:
        """Count one request (see the module docstring). A refused one (`admitted` False) is
        counted but kept out of the latency histogram, which it would drag down under load."""
        if admitted:
            self.e2e.observe(rec.latency_s)
        self.model_requests.labels(rec.model, rec.served_by, str(rec.status)).inc()
        u = rec.usage
        self.prompt_tokens.inc(u.prompt_tokens)
        self.generation_tokens.inc(u.completion_tokens)
        if rec.served_by:
            self._tokens(self.model_tokens, rec.served_by, u)
            self.cost.labels(rec.served_by).inc(u.cost_usd)
            if rec.served_by != rec.model:
                self.routed.labels(rec.model, rec.served_by).inc()
        self._tokens(self.asked_tokens, rec.model, u)
        for call in rec.calls:
            self.program_calls.labels(rec.model, call.served_by).inc()
            self.program_tokens.labels(rec.model, call.served_by, "prompt").inc(call.usage.prompt_tokens)
            self.program_tokens.labels(rec.model, call.served_by, "completion").inc(call.usage.completion_tokens)
        if rec.timing is not None:
            if rec.timing.ttft_s is not None:
                self.ttft.observe(rec.timing.ttft_s)
            if rec.timing.tpot_s is not None:
                self.tpot.observe(rec.timing.tpot_s)

    @staticmethod
    def _tokens(counter: Counter, model: str, u: Usage) -> None:
        counter.labels(model, "prompt").inc(u.prompt_tokens)
        counter.labels(model, "completion").inc(u.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
