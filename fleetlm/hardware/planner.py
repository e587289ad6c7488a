"""The cheapest set of device types and counts that serves a trace within an SLO.

Contract: `solve(...)` is Mélange's cost-aware bin packing as an integer program (scipy's
`milp`, HiGHS): each prompt-length bucket is cut into `slices`; every slice goes either to
one colocated pool type or, when `disaggregate`, to a prompt pool type plus a token pool
type (Splitwise/DistServe); each pool type's replica count must cover the load its slices
put on it (rate / capacity, from `capacity.py`, scaled by `load_factor`); the objective is
$/hour. `plan_validated(...)` searches the smallest `load_factor` whose plan meets the SLO
in the discrete-event simulator on the real arrivals (bursty traces need far more than
their mean rate), so every plan it returns has been checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from fleetlm.hardware.capacity import SLO, capacity
from fleetlm.hardware.devices import Device
from fleetlm.hardware.perfmodel import ModelShape, Perf
from fleetlm.hardware.simulator import SimPool, SimResult, simulate
from fleetlm.hardware.trace import Buckets, Trace

ROLES = ("co", "prefill", "decode")
LOAD_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)


@dataclass(frozen=True)
class Pool:
    name: str  # e.g. "L4x1", "H100-SXMx2:prefill"
    perf: Perf
    role: str
    count: int

    @property
    def usd_per_hour(self) -> float:
        return self.count * self.perf.usd_per_hour


@dataclass
class Plan:
    pools: list[Pool]
    routes: dict[int, list[tuple[str, str | None]]]  # bucket index -> per slice: (entry pool, decode pool)
    load_factor: float
    sim: SimResult | None = None
    devices: list[str] = field(default_factory=list)

    @property
    def usd_per_hour(self) -> float:
        return sum(p.usd_per_hour for p in self.pools)

    def route(self, buckets: Buckets):
        """request index -> (entry pool, decode pool): slices of a bucket taken in turn."""
        seen: dict[int, int] = {}
        cache = {}
        for i, b in enumerate(buckets.of_request):
            slices = self.routes[int(b)]
            k = seen.get(int(b), 0)
            seen[int(b)] = k + 1
            cache[i] = slices[k % len(slices)]
        return cache.__getitem__

    def bucket_pools(self) -> dict[int, list[str]]:
        """bucket index -> entry pools in order of the share of traffic they take (for the gateway)."""
        out = {}
        for b, slices in self.routes.items():
            names = [s[0] for s in slices]
            out[b] = sorted(set(names), key=lambda n: -names.count(n))
        return out


def instance_types(shape: ModelShape, devices: list[Device], min_tokens: int, dtype: str = "bf16") -> list[Perf]:
    """Every (device, tp) on which the model fits with at least `min_tokens` of KV cache;
    devices with no peak for `dtype` (fp8 or fp32 not known) are left out."""
    out = []
    for d in devices:
        unknown = (dtype == "fp8" and d.fp8_tflops is None) or (dtype == "fp32" and d.fp32_tflops is None)
        for tp in (1, 2, 4, 8):
            if tp > d.max_tp or unknown:
                continue
            p = Perf(shape, d, tp, dtype=dtype)
            if p.fits(min_tokens):
                out.append(p)
    return out


def solve(types: list[Perf], buckets: Buckets, slo: SLO, *, load_factor: float = 1.0, slices: int = 4,
          disaggregate: bool = True, time_limit_s: float = 30.0) -> Plan | None:
    """The MILP; None when no mix of `types` can serve every bucket within the SLO."""
    roles = ROLES if disaggregate else ("co",)
    cap = {(k, b.index, r): capacity(t, b, slo, r) for k, t in enumerate(types) for b in buckets.buckets
           for r in roles}
    n_vars, cost, integ, ub = 0, [], [], []
    count_var = {}
    for r in roles:
        for k, t in enumerate(types):
            count_var[r, k] = n_vars
            n_vars += 1
            cost.append(t.usd_per_hour)
            integ.append(1)
            ub.append(np.inf)
    assign = {}  # (slice id, k, role) -> var
    slice_bucket = []
    for b in buckets.buckets:
        for _ in range(slices):
            s = len(slice_bucket)
            slice_bucket.append(b)
            for r in roles:
                for k in range(len(types)):
                    if cap[k, b.index, r] > 0:
                        assign[s, k, r] = n_vars
                        n_vars += 1
                        cost.append(1e-6)  # ties: fewer assignments
                        integ.append(1)
                        ub.append(1)
    rows = 2 * len(slice_bucket) + len(count_var)
    A = lil_matrix((rows, n_vars))
    lo, hi = np.zeros(rows), np.zeros(rows)
    for s, b in enumerate(slice_bucket):
        for (s2, k, r), v in assign.items():
            if s2 != s:
                continue
            if r in ("co", "prefill"):
                A[2 * s, v] = 1  # each slice enters exactly one pool type
            if r == "prefill":
                A[2 * s + 1, v] = -1  # ... and a split slice has exactly one decode pool type
            if r == "decode":
                A[2 * s + 1, v] = 1
        lo[2 * s] = hi[2 * s] = 1
    base = 2 * len(slice_bucket)
    for j, ((r, k), cv) in enumerate(count_var.items()):
        A[base + j, cv] = -1
        lo[base + j] = -np.inf
    for (s, k, r), v in assign.items():
        b = slice_bucket[s]
        load = load_factor * b.rate / slices / cap[k, b.index, r]
        A[base + list(count_var).index((r, k)), v] = 0.0 if np.isinf(cap[k, b.index, r]) else load
    res = milp(np.array(cost), constraints=LinearConstraint(A.tocsr(), lo, hi), integrality=np.array(integ),
               bounds=Bounds(np.zeros(n_vars), np.array(ub, dtype=float)),
               options={"time_limit": time_limit_s})
    if res.x is None:
        return None
    x = np.round(res.x).astype(int)
    pools, names = [], {}
    for (r, k), cv in count_var.items():
        if x[cv] > 0:
            name = types[k].name + ("" if r == "co" else f":{r}")
            names[r, k] = name
            pools.append(Pool(name, types[k], r, int(x[cv])))
    routes: dict[int, list] = {b.index: [] for b in buckets.buckets}
    for s, b in enumerate(slice_bucket):
        chosen = {r: k for (s2, k, r), v in assign.items() if s2 == s and x[v] == 1}
        if "co" in chosen:
            routes[b.index].append((names["co", chosen["co"]], None))
        else:
            routes[b.index].append((names["prefill", chosen["prefill"]], names["decode", chosen["decode"]]))
    return Plan(pools, routes, load_factor, devices=sorted({p.perf.device.name for p in pools}))


def validate(plan: Plan, buckets: Buckets, trace: Trace, slo: SLO) -> SimResult:
    pools = {p.name: SimPool(p.perf, p.role, p.count) for p in plan.pools}
    plan.sim = simulate(pools, plan.route(buckets), trace, slo)
    return plan.sim


def plan_validated(types: list[Perf], buckets: Buckets, trace: Trace, slo: SLO, *, slices: int = 4,
                   disaggregate: bool = True, log=None) -> Plan | None:
    """The cheapest plan over `types` that meets the SLO in simulation: bisection over
    LOAD_FACTORS (a larger factor never makes a plan cheaper). None if none validates."""
    tried: dict[int, Plan | None] = {}

    def attempt(i: int) -> Plan | None:
        if i not in tried:
            plan = solve(types, buckets, slo, load_factor=LOAD_FACTORS[i], slices=slices, disaggregate=disaggregate)
            if plan is not None:
                sim = validate(plan, buckets, trace, slo)
                if log:
                    log(f"  load x{LOAD_FACTORS[i]:<4g} {describe(plan):<50} ${plan.usd_per_hour:7.2f}/h  "
                        f"SLO met by {100 * sim.attainment:.2f}%")
            tried[i] = plan if plan is not None and plan.sim.attainment >= slo.attainment else None
            if plan is None:
                tried[i] = None
        return tried[i]

    lo, hi = 0, len(LOAD_FACTORS) - 1
    if attempt(hi) is None:
        return None
    while lo < hi:  # invariant: attempt(hi) validates
        mid = (lo + hi) // 2
        if attempt(mid) is not None:
            hi = mid
        else:
            lo = mid + 1
    ok = [p for p in tried.values() if p is not None]
    return min(ok, key=lambda p: p.usd_per_hour)


def describe(plan: Plan) -> str:
    return " + ".join(f"{p.count}x {p.name}" for p in plan.pools)
