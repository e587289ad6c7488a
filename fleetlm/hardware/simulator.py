"""Discrete-event simulation of a plan serving a trace.

Contract: `simulate(pools, route, trace, slo)` replays every request of `trace` at its
arrival time. `pools` maps a pool name to `SimPool(perf, role, count)`; `route(i)` gives
request i's (entry pool, decode pool or None). Each replica batches continuously like
fleetlm's scheduler: every step decodes one token for each running sequence and spends
the rest of a token budget on prompt chunks (budget: the largest chunk that keeps a step
within the TPOT target, as in `capacity.chunk_budget`), admitting waiting requests while
their KV cache fits. Step times come from the performance model. "prefill" replicas run
whole prompts and hand the KV cache to the least-loaded replica of the decode pool after a
network transfer. Within a pool a request goes to the replica with the least prompt work
queued. Runs of pure decode steps are simulated as one event (cut short when a request
arrives), so an hour of traffic takes seconds.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from fleetlm.hardware.capacity import CHUNKS, SLO, STEP_TARGET
from fleetlm.hardware.perfmodel import Perf, StepWork, decode_work, prefill_work
from fleetlm.hardware.trace import Trace

MAX_SEQS = 256  # running sequences per replica


@dataclass(frozen=True)
class SimPool:
    perf: Perf
    role: str  # co | prefill | decode
    count: int


@dataclass(eq=False)
class _Req:
    i: int
    arrival: float
    prompt: int
    output: int
    decode_pool: str | None
    computed: int = 0  # prompt tokens computed
    generated: int = 0
    started: float | None = None
    first: float | None = None
    finish: float | None = None


@dataclass(eq=False)
class _Replica:
    name: str
    perf: Perf
    role: str
    slo: SLO
    waiting: deque = field(default_factory=deque)
    running: list = field(default_factory=list)
    kv_used: int = 0
    busy_s: float = 0.0
    version: int = 0
    step: tuple | None = None  # ("macro", start, dt, k, decoders) | ("one", start, end, decoders, chunks)
    _budget: dict = field(default_factory=dict)

    def queued_tokens(self) -> int:
        return sum(r.prompt - r.computed for r in self.waiting) + sum(r.prompt - r.computed for r in self.running)

    def _chunk_budget(self, batch: int, ctx: float) -> int:
        if self.role == "prefill":
            return CHUNKS[-1]
        key = (batch, int(ctx) // 256)
        if key not in self._budget:
            best = CHUNKS[0]  # never zero: a prompt must make progress even if the SLO is missed
            for c in CHUNKS:
                if self.perf.step_time(prefill_work(c, ctx) + decode_work(batch, ctx)) <= STEP_TARGET * self.slo.tpot_s:
                    best = c
            self._budget[key] = best
        return self._budget[key]

    def _reserve(self, r: _Req) -> int:
        return r.prompt if self.role == "prefill" else r.prompt + r.output

    def plan(self, now: float) -> float | None:
        """Choose the next step; returns when it ends, or None when there is nothing to do."""
        decoders = [r for r in self.running if r.computed >= r.prompt]
        partial = [r for r in self.running if r.computed < r.prompt]
        cap = self.perf.kv_capacity_tokens()
        can_admit = bool(self.waiting) and len(self.running) < MAX_SEQS and (
            self.kv_used + self._reserve(self.waiting[0]) <= cap or not self.running)
        if not decoders and not partial and not can_admit:
            self.step = None
            return None
        ctx = (sum(r.prompt + r.generated for r in decoders) / len(decoders)) if decoders else 0.0
        if decoders and not partial and not can_admit:
            k = min(r.output - r.generated for r in decoders)
            dt = self.perf.decode_step(len(decoders), ctx + k / 2)
            self.step = ("macro", now, dt, k, decoders)
            return now + k * dt
        budget = self._chunk_budget(len(decoders), ctx) if (partial or can_admit) else 0
        work = decode_work(len(decoders), ctx) if decoders else StepWork()
        chunks = []
        for r in partial:
            if budget <= 0:
                break
            n = min(budget, r.prompt - r.computed)
            chunks.append((r, n))
            budget -= n
        while budget > 0 and self.waiting and len(self.running) < MAX_SEQS:
            r = self.waiting[0]
            if self.role == "decode" or r.computed >= r.prompt:  # KV arrived: decode only
                if self.kv_used + self._reserve(r) > cap and self.running:
                    break
            elif self.kv_used + self._reserve(r) > cap and self.running:
                break
            self.waiting.popleft()
            self.running.append(r)
            self.kv_used += self._reserve(r)
            if r.started is None:
                r.started = now
            if r.computed >= r.prompt:
                continue  # joins the decoders next step
            n = min(budget, r.prompt - r.computed)
            chunks.append((r, n))
            budget -= n
        for r, n in chunks:
            work = work + prefill_work(n, r.computed, samples=r.computed + n == r.prompt)
        if work.tokens == 0:  # only admissions of transferred sequences
            dt = self.perf.step_time(decode_work(1, ctx or 1))
        else:
            dt = self.perf.step_time(work)
        self.step = ("one", now, now + dt, decoders, chunks)
        return now + dt

    def cut(self, now: float) -> float | None:
        """A request arrived mid-run of decode steps: end the run at the next step boundary."""
        if not self.step or self.step[0] != "macro":
            return None
        _, start, dt, k, dec = self.step
        j = min(k, max(1, math.ceil((now - start) / dt - 1e-9)))
        if j == k:
            return None
        self.step = ("macro", start, dt, j, dec)
        return start + j * dt

    def finish(self, now: float) -> list[_Req]:
        """Apply the step that ends now; returns requests whose prompt replica just finished."""
        kind = self.step[0]
        handoff = []
        if kind == "macro":
            _, start, dt, k, decoders = self.step
            chunks = []
        else:
            _, start, _, decoders, chunks = self.step
            k = 1
        self.busy_s += now - start
        for r in decoders:
            r.generated += k
        for r, n in chunks:
            r.computed += n
            if r.computed == r.prompt:
                r.first, r.generated = now, 1
                if self.role == "prefill" and r.output > 1:
                    handoff.append(r)
        done = [r for r in self.running if r.generated >= r.output or r in handoff]
        for r in done:
            if r.generated >= r.output:
                r.finish = now
            self.running.remove(r)
            self.kv_used -= self._reserve(r)
        self.step = None
        return handoff


@dataclass
class SimResult:
    attainment: float  # fraction of requests within both SLOs
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float
    queue_p99: float  # arrival -> first scheduled, seconds
    utilization: dict[str, float]  # pool -> busy fraction of its replicas
    usd: float  # cost of the pools over the trace's duration
    per_request_ok: np.ndarray = field(repr=False, default=None)
    ttft: np.ndarray = field(repr=False, default=None)
    tpot: np.ndarray = field(repr=False, default=None)


def simulate(pools: dict[str, SimPool], route, trace: Trace, slo: SLO) -> SimResult:
    reps = {name: [_Replica(f"{name}#{j}", p.perf, p.role, slo) for j in range(p.count)]
            for name, p in pools.items()}
    reqs = []
    events, seq = [], 0

    def push(t, kind, obj, version=0):
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, obj, version))
        seq += 1

    for i in range(len(trace)):
        entry, dec = route(i)
        if entry not in reps or (dec is not None and dec not in reps):
            raise ValueError(f"request {i}: routed to unknown pool {entry}/{dec}")
        r = _Req(i, float(trace.arrival_s[i]), int(trace.prompt[i]), int(trace.output[i]), dec)
        reqs.append(r)
        push(r.arrival, "arrive", (entry, r))

    def kick(rep: _Replica, now: float):
        if rep.step is None:
            end = rep.plan(now)
            if end is not None:
                push(end, "step", rep, rep.version)
        else:
            end = rep.cut(now)
            if end is not None:
                rep.version += 1
                push(end, "step", rep, rep.version)

    while events:
        now, _, kind, obj, version = heapq.heappop(events)
        if kind == "arrive" or kind == "join":
            pool, r = obj
            group = reps[pool]
            if kind == "join":
                rep = min(group, key=lambda x: (x.kv_used + sum(q.prompt + q.output for q in x.waiting)))
            else:
                rep = min(group, key=lambda x: (x.queued_tokens(), len(x.running)))
            rep.waiting.append(r)
            kick(rep, now)
        elif version == obj.version:
            rep = obj
            for r in rep.finish(now):
                net = min(rep.perf.device.network_gbps, pools[r.decode_pool].perf.device.network_gbps)
                push(now + r.prompt * rep.perf.kv_bytes_per_token() / (net * 1e9), "join", (r.decode_pool, r))
            kick(rep, now)
    return _summarize(reqs, reps, pools, trace, slo)


def _summarize(reqs, reps, pools, trace, slo) -> SimResult:
    ttft = np.array([r.first - r.arrival for r in reqs])
    tpot = np.array([(r.finish - r.first) / (r.output - 1) if r.output > 1 else 0.0 for r in reqs])
    queue = np.array([r.started - r.arrival for r in reqs])
    ok = (ttft <= slo.ttft_s) & (tpot <= slo.tpot_s)
    end = max(r.finish for r in reqs)
    duration = max(end - float(trace.arrival_s[0]), 1e-9)
    util = {name: sum(x.busy_s for x in group) / (len(group) * duration) for name, group in reps.items()}
    usd = sum(p.perf.usd_per_hour * p.count for p in pools.values()) * duration / 3600
    q = lambda a, p: float(np.percentile(a, p))
    return SimResult(float(ok.mean()), q(ttft, 50), q(ttft, 99), q(tpot, 50), q(tpot, 99), q(queue, 99),
                     util, usd, ok, ttft, tpot)
