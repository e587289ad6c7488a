"""How many requests per second of one bucket a single replica sustains within an SLO.

Contract: `capacity(perf, bucket, slo, role)` -> requests/s (0.0 when the replica cannot meet
the SLO for that bucket at any rate). Roles: "co" (prefill and decode on the same replica,
chunked prefill as in Sarathi-Serve: the per-step token budget is the largest that keeps a
step within the TPOT target, so decodes never stall behind a long prompt), "prefill" (a
Splitwise/DistServe prompt replica: whole prompts, TTFT only) and "decode" (a token
replica: batch as large as the TPOT target and memory allow; the KV cache arrives over the
network). These are analytic queueing estimates (M/M/1 tail for the prefill queue); the
planner checks every plan in the discrete-event simulator and adds headroom where they
are optimistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleetlm.hardware.perfmodel import Perf, decode_work, prefill_work
from fleetlm.hardware.trace import Bucket

STEP_TARGET = 0.8  # a step may take this fraction of the TPOT SLO (room for jitter and queueing)
CHUNKS = (256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclass(frozen=True)
class SLO:
    ttft_s: float  # p99 time to first token
    tpot_s: float  # p99 time per output token (per request: (finish - first token) / (tokens - 1))
    attainment: float = 0.99  # fraction of requests that must meet both

    def __post_init__(self):
        if self.ttft_s <= 0 or self.tpot_s <= 0 or not 0 < self.attainment <= 1:
            raise ValueError("SLO: ttft and tpot must be > 0 and attainment in (0, 1]")


def parse_slo(text: str) -> SLO:
    """'ttft_p99=2,tpot_p99=0.1' (seconds; 'ms' suffix allowed) -> SLO."""
    vals = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, v = part.partition("=")
        v = v.strip()
        scale = 1e-3 if v.endswith("ms") else 1.0
        try:
            vals[key.strip()] = float(v.removesuffix("ms").removesuffix("s")) * scale
        except ValueError:
            raise ValueError(f"--slo: bad value in {part!r}") from None
    unknown = set(vals) - {"ttft_p99", "tpot_p99", "attainment"}
    if unknown or not {"ttft_p99", "tpot_p99"} <= set(vals):
        raise ValueError(f"--slo needs ttft_p99=SECONDS,tpot_p99=SECONDS (got {text!r})")
    return SLO(vals["ttft_p99"], vals["tpot_p99"], vals.get("attainment", 0.99))


def chunk_budget(perf: Perf, slo: SLO, decode_batch: int, ctx: float) -> int:
    """Largest prompt-chunk size whose step (with `decode_batch` decodes) stays within the
    step target; 0 if even the smallest chunk does not."""
    best = 0
    for c in CHUNKS:
        t = perf.step_time(prefill_work(c, ctx) + decode_work(decode_batch, ctx))
        if t <= STEP_TARGET * slo.tpot_s:
            best = c
    return best


def _tail_wait(service_s: float, rho: float, q: float) -> float:
    """q-quantile of the wait in an M/M/1 queue with mean service `service_s` at load rho."""
    if rho <= 0 or rho * (1 - q) >= rho:
        return 0.0
    return max(0.0, service_s * math.log(rho / (1 - q)) / (1 - rho))


def _max_rate(feasible, hi: float) -> float:
    """Largest rate on a geometric grid up to `hi` below which feasible() holds throughout
    (scanning up from the smallest, so a non-monotone corner never inflates it)."""
    best = 0.0
    for i in range(64):
        r = hi * 10 ** (-5 + 5 * i / 63)
        if not feasible(r):
            break
        best = r
    return best


def capacity(perf: Perf, b: Bucket, slo: SLO, role: str = "co") -> float:
    if role not in ("co", "prefill", "decode"):
        raise ValueError(f"role must be co, prefill or decode, got {role!r}")
    p_mean, p_tail = max(1, b.prompt_mean), max(1, b.prompt)
    dec_tokens = max(0.0, b.output_mean - 1)
    ctx = p_mean + b.output_mean / 2
    if perf.max_batch(b.prompt + b.output) < 1:
        return 0.0
    if role == "decode":
        return _decode_rate(perf, b, slo, ctx, dec_tokens)
    if role == "prefill":
        t_mean, t_tail = perf.prefill_time(int(p_mean)), perf.prefill_time(p_tail)
        if t_tail > slo.ttft_s:
            return 0.0
        return _max_rate(lambda r: r * t_mean < 0.95 and
                         _tail_wait(t_mean, r * t_mean, slo.attainment) + t_tail <= slo.ttft_s, 1 / t_mean)

    def feasible(r: float) -> bool:
        batch, step = 1.0, perf.decode_step(1, ctx)
        for _ in range(20):  # Little's law: decoding sequences = rate x decode time
            step = perf.decode_step(max(1, math.ceil(batch)), ctx)
            batch = max(1.0, r * dec_tokens * step)
        bsz = math.ceil(batch)
        if bsz > perf.max_batch(int(ctx + b.output_mean / 2)) or step > STEP_TARGET * slo.tpot_s:
            return False
        chunk = chunk_budget(perf, slo, bsz, ctx)
        if chunk == 0:
            return False
        t_pf = perf.prefill_time(int(p_mean), chunk, bsz, ctx) - perf.decode_step(bsz, ctx) * math.ceil(p_mean / chunk)
        rho_dec = r * dec_tokens * step / bsz
        rho = r * max(t_pf, 0.0) + rho_dec
        if rho >= 0.95:
            return False
        t_tail = perf.prefill_time(p_tail, chunk, bsz, ctx)
        wait = _tail_wait(max(t_pf, 1e-6) / (1 - rho_dec), rho, slo.attainment)
        return wait + t_tail <= slo.ttft_s

    return _max_rate(feasible, 1 / max(perf.prefill_time(int(p_mean)), 1e-6))


def _decode_rate(perf: Perf, b: Bucket, slo: SLO, ctx: float, dec_tokens: float) -> float:
    if dec_tokens <= 0:
        return math.inf  # nothing to decode: the first token comes from the prompt replica
    seq_tokens = int(b.prompt_mean + b.output_mean)
    transfer = b.prompt * perf.kv_bytes_per_token() / (perf.device.network_gbps * 1e9)
    budget = STEP_TARGET * slo.tpot_s - transfer / dec_tokens
    best, bsz = 0.0, 1
    while bsz <= perf.max_batch(seq_tokens) and bsz <= 1024:
        step = perf.decode_step(bsz, ctx)
        if step > budget:
            break
        best = max(best, 0.9 * bsz / (dec_tokens * step))
        bsz = bsz + 1 if bsz < 8 else int(bsz * 1.25)
    return best
