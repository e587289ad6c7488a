"""Cost–quality evaluation of a router on a test split, with the published metrics.

Inputs are matrices over n test queries and M models: ``Y`` (n, M) observed scores,
``C`` (n, M) USD, and the router's predicted quality ``P`` (n, M). A *curve* is a list of
(total cost USD, mean quality) points, one per λ of the sweep.

Metrics (each function says exactly what it computes, so they can be checked by hand):

* **random** routing: each query to a uniformly random model — reported as its expectation
  (mean of the models' accuracies, mean of their total costs), so it has no seed.
* **oracle**: each query to the cheapest model with the best observed score.
* **AIQ** (RouterBench): area under the curve's non-decreasing upper convex hull, divided by
  the cost range. Here every curve is integrated over one shared range ``[c_lo, c_hi]`` (the
  cheapest and the most expensive single model's total cost) so curves are comparable; left
  of a curve's first point its quality is 0 (nothing is affordable there), right of its last
  point it stays flat. A single model is a one-point curve, so a model that costs ``c`` with
  accuracy ``a`` scores ``a · (c_hi − c) / (c_hi − c_lo)``. The *zero router* (RouterBench's
  baseline: the hull of the single models, reachable by mixing them at random) is reported too.
* **APGR / CPT** (RouteLLM), two models only: queries are sent to the strong model in order of
  predicted advantage ``P[:, strong] − P[:, weak]``; at each share f of strong calls
  (f = 0, 1/n, …, 1), ``PGR(f) = (q(f) − q_weak) / (q_strong − q_weak)``. APGR is the
  trapezoid area under PGR over f ∈ [0, 1]; CPT(x) is the smallest f with PGR ≥ x.
* **routing latency** (:func:`time_rank`): ``Router.rank(prompt)`` per test prompt, one at a
  time, embedding included: what routing adds to a request (p50 and p90).
* **cost_at_best_quality**: over the λ sweep's points (not the hull: only realised routings),
  the lowest total cost at which the router's quality ≥ the best single model's accuracy,
  as a fraction of that model's total cost; ``None`` (printed ``n/a``) if it never does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleetlm.compound.router.router import LAMBDA_GRID


@dataclass
class CurvePoint:
    lam: float
    cost: float  # USD, total over the test queries
    quality: float  # mean score over the test queries
    calls: dict[str, float] = field(default_factory=dict)  # model -> share of queries


@dataclass
class EvalReport:
    models: list[str]
    accuracy: list[float]  # per model, mean score
    cost: list[float]  # per model, total USD
    random: tuple[float, float]  # (cost, quality), expectation
    oracle: tuple[float, float]
    curve: list[CurvePoint]
    aiq: dict[str, float]  # "router", "zero_router" and each model's name
    best_model: str
    cost_at_best_quality: float | None
    two_model: dict | None = None  # {"strong", "weak", "apgr", "cpt50", "cpt80"}
    latency: dict | None = None  # routing time per request: {"p50_ms", "p90_ms", "n", "window"}


def time_rank(routers: dict, prompts: list[str]) -> dict[str, np.ndarray]:
    """Milliseconds of ``router.rank(prompt)`` for each prompt, one prompt at a time, per named
    router (embedding included). With several routers they alternate on every prompt, so a
    shared machine's drifts hit them alike. One untimed warm-up call each."""
    import time

    if not prompts:
        raise ValueError("time_rank needs at least one prompt")
    for r in routers.values():
        r.rank(prompts[0])
    out = {name: [] for name in routers}
    for prompt in prompts:
        for name, r in routers.items():
            t = time.perf_counter()
            r.rank(prompt)
            out[name].append(time.perf_counter() - t)
    return {name: np.array(v) * 1e3 for name, v in out.items()}


def latency_summary(ms: np.ndarray, window) -> dict:
    """``EvalReport.latency`` from :func:`time_rank`'s milliseconds and the encoder's window."""
    return {"p50_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "n": len(ms),
            "window": f"{window.head_tokens}+{window.tail_tokens}"}


def sweep(P: np.ndarray, Y: np.ndarray, C: np.ndarray, cost_norm: np.ndarray, models: list[str],
          lams: np.ndarray = LAMBDA_GRID) -> list[CurvePoint]:
    """One point per λ: route each query to argmax(P − λ·cost_norm); drop repeated routings.

    ``cost_norm`` is (M,) (flat per-model costs) or (n, M) (per-query expected costs, what
    :meth:`.router.Router.cost_weights` returns)."""
    rows, out, seen = np.arange(len(Y)), [], set()
    for lam in lams:
        pick = np.argmax(P - lam * cost_norm, axis=1)
        key = pick.tobytes()
        if key in seen:
            continue
        seen.add(key)
        share = np.bincount(pick, minlength=len(models)) / len(pick)
        out.append(CurvePoint(float(lam), float(C[rows, pick].sum()), float(Y[rows, pick].mean()),
                              {m: float(s) for m, s in zip(models, share) if s > 0}))
    return out


def oracle(Y: np.ndarray, C: np.ndarray) -> tuple[float, float]:
    """(total cost, quality) of sending each query to the cheapest of its best-scoring models."""
    best = Y.max(axis=1, keepdims=True)
    masked = np.where(Y >= best, C, np.inf)
    pick, rows = masked.argmin(axis=1), np.arange(len(Y))
    return float(C[rows, pick].sum()), float(Y[rows, pick].mean())


def upper_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-decreasing upper convex hull of (cost, quality) points, by increasing cost."""
    pts = sorted(set(points), key=lambda p: (p[0], -p[1]))
    frontier = []  # non-decreasing in quality: drop points no better than a cheaper one
    for c, q in pts:
        if not frontier or q > frontier[-1][1]:
            frontier.append((c, q))
    hull: list[tuple[float, float]] = []
    for p in frontier:  # monotone chain, upper side
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    return hull


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def aiq(points: list[tuple[float, float]], c_lo: float, c_hi: float) -> float:
    """Mean height over [c_lo, c_hi] of the points' hull (0 before its first point, flat after)."""
    if c_hi <= c_lo:
        raise ValueError(f"AIQ needs c_hi > c_lo, got [{c_lo}, {c_hi}]")
    hull = upper_hull(points)
    hx, hy = np.array([p[0] for p in hull]), np.array([p[1] for p in hull])
    start = max(c_lo, hx[0])  # quality is 0 before the first point
    if start >= c_hi:
        return 0.0
    # Exact area of the piecewise-linear hull (np.interp stays flat past the last point).
    xs = np.concatenate([[start], hx[(hx > start) & (hx < c_hi)], [c_hi]])
    return float(np.trapezoid(np.interp(xs, hx, hy), xs) / (c_hi - c_lo))


def apgr_cpt(advantage: np.ndarray, y_strong: np.ndarray, y_weak: np.ndarray) -> dict:
    """RouteLLM's APGR and CPT(50%), CPT(80%) (module docstring); inputs are (n,) arrays."""
    n = len(advantage)
    q_s, q_w = float(y_strong.mean()), float(y_weak.mean())
    if q_s <= q_w:
        raise ValueError(f"the strong model must beat the weak one ({q_s:.4f} <= {q_w:.4f})")
    order = np.argsort(-advantage, kind="stable")
    # q(f=i/n): the i most advantaged queries go to the strong model, the rest to the weak.
    gain = np.concatenate([[0.0], np.cumsum((y_strong - y_weak)[order])])
    pgr = gain / n / (q_s - q_w)  # (q(f) - q_weak) / (q_strong - q_weak)
    f = np.arange(n + 1) / n

    def cpt(x):
        hit = np.nonzero(pgr >= x - 1e-12)[0]
        return float(f[hit[0]]) if len(hit) else None

    return {"apgr": float(np.trapezoid(pgr, f)), "cpt50": cpt(0.5), "cpt80": cpt(0.8)}


def cost_at_best_quality(curve: list[CurvePoint], best_quality: float, best_cost: float) -> float | None:
    """Lowest curve cost reaching ``best_quality``, over ``best_cost``; None if never."""
    costs = [p.cost for p in curve if p.quality >= best_quality - 1e-12]
    return min(costs) / best_cost if costs else None


def evaluate(P: np.ndarray, Y: np.ndarray, C: np.ndarray, cost_norm: np.ndarray, models: list[str],
             *, pair: tuple[str, str] | None = None) -> EvalReport:
    """Everything ``fleet router eval`` prints. ``pair=(strong, weak)`` adds APGR/CPT."""
    acc, tot = Y.mean(axis=0), C.sum(axis=0)
    curve = sweep(P, Y, C, cost_norm, models)
    c_lo, c_hi = float(tot.min()), float(tot.max())
    best = int(np.lexsort((tot, -acc))[0])  # most accurate, cheaper on ties
    singles = list(zip(tot.tolist(), acc.tolist()))
    aiqs = {"router": aiq([(p.cost, p.quality) for p in curve], c_lo, c_hi),
            "zero_router": aiq(singles, c_lo, c_hi)}
    aiqs.update({m: aiq([s], c_lo, c_hi) for m, s in zip(models, singles)})
    two = None
    if pair is not None:
        s, w = (models.index(m) for m in pair)
        two = {"strong": pair[0], "weak": pair[1], **apgr_cpt(P[:, s] - P[:, w], Y[:, s], Y[:, w])}
    return EvalReport(models=list(models), accuracy=acc.tolist(), cost=tot.tolist(),
                      random=(float(tot.mean()), float(acc.mean())), oracle=oracle(Y, C),
                      curve=curve, aiq=aiqs, best_model=models[best],
                      cost_at_best_quality=cost_at_best_quality(curve, float(acc[best]), float(tot[best])),
                      two_model=two)


def format_report(r: EvalReport, *, max_points: int = 12) -> str:
    """The tables as text; the last line is ``cost_at_best_quality: 0.xx`` or ``n/a``."""
    width = max(len(m) for m in r.models + ["router (best)"])
    lines = [f"{'model':<{width}}  accuracy  total_cost_usd  aiq"]
    for m, a, c in sorted(zip(r.models, r.accuracy, r.cost), key=lambda t: t[2]):
        lines.append(f"{m:<{width}}  {a:8.4f}  {c:14.4f}  {r.aiq[m]:.4f}")
    lines.append(f"{'random (expected)':<{width}}  {r.random[1]:8.4f}  {r.random[0]:14.4f}")
    lines.append(f"{'oracle':<{width}}  {r.oracle[1]:8.4f}  {r.oracle[0]:14.4f}")
    lines += ["", "router cost-quality curve (lambda sweep, frontier points):",
              f"{'lambda':>10}  {'cost_usd':>9}  {'cost/best':>9}  {'quality':>7}  top models"]
    best_cost = r.cost[r.models.index(r.best_model)]
    for p in _thin(frontier(r.curve), max_points):
        top = ", ".join(f"{m.split('/')[-1]} {s:.0%}" for m, s in
                        sorted(p.calls.items(), key=lambda t: -t[1])[:3])
        lines.append(f"{p.lam:10.4g}  {p.cost:9.4f}  {p.cost / best_cost:9.3f}  {p.quality:7.4f}  {top}")
    peak = max(r.curve, key=lambda p: (p.quality, -p.cost))
    lines += ["", f"router peak quality: {peak.quality:.4f} at {peak.cost:.4f} USD "
                  f"({peak.cost / best_cost:.3f} of {r.best_model})",
              f"AIQ router: {r.aiq['router']:.4f}   zero router (model mixtures): "
              f"{r.aiq['zero_router']:.4f}   best single model: {max(r.aiq[m] for m in r.models):.4f}"]
    if r.two_model:
        t = r.two_model
        lines.append(f"two-model ({t['strong']} vs {t['weak']}): APGR {t['apgr']:.4f}  "
                     f"CPT(50%) {_pct(t['cpt50'])}  CPT(80%) {_pct(t['cpt80'])}")
    if r.latency:
        t = r.latency
        lines.append(f"routing latency per request (Router.rank, MiniLM embedding included, "
                     f"{t['window']} token window, {t['n']} test prompts, 1 at a time): "
                     f"p50 {t['p50_ms']:.1f} ms, p90 {t['p90_ms']:.1f} ms")
    cab = r.cost_at_best_quality
    lines.append(f"best single model: {r.best_model} "
                 f"({r.accuracy[r.models.index(r.best_model)]:.4f}, {best_cost:.4f} USD)")
    lines.append(f"cost_at_best_quality: {'n/a' if cab is None else f'{cab:.2f}'}")
    return "\n".join(lines)


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def frontier(points: list, quality=lambda p: p.quality, cost=lambda p: p.cost) -> list:
    """Points no cheaper (or equally cheap) point matches in quality, by increasing cost."""
    out = []
    for p in sorted(points, key=lambda p: (cost(p), -quality(p))):
        if not out or quality(p) > quality(out[-1]):
            out.append(p)
    return out


def _thin(points: list, n: int) -> list:
    if len(points) <= n:
        return points
    idx = np.unique(np.linspace(0, len(points) - 1, n).round().astype(int))
    return [points[i] for i in idx]


def plot_pareto(r: EvalReport, path, *, title: str = "") -> None:
    """Pareto plot PNG: models as points, the router's curve, random and oracle."""
    import matplotlib  # optional dependency, only for plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter(r.cost, r.accuracy, color="tab:gray", zorder=3)
    for m, c, a in zip(r.models, r.cost, r.accuracy):
        ax.annotate(m.split("/")[-1], (c, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = frontier(r.curve)
    ax.plot([p.cost for p in front], [p.quality for p in front], "-o", ms=2.5, color="tab:blue",
            label=f"router (AIQ {r.aiq['router']:.3f})", zorder=4)
    ax.scatter(*r.oracle, marker="*", s=150, color="tab:green", label="oracle", zorder=5)
    ax.scatter(*r.random, marker="x", color="tab:red", label="random (expected)", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("total cost on the test split (USD, log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "router cost-quality")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
