"""`fleet plan`: load the trace, plan heterogeneous and single-device-type fleets, validate
each in the simulator, print them, plot them. The last printed line is
`saving vs best single device type: NN%` (or `n/a` when nothing validates)."""

from __future__ import annotations

import json
import time

from fleetlm.hardware.capacity import parse_slo
from fleetlm.hardware.perfmodel import resolve_shape
from fleetlm.hardware.planner import Plan, describe, instance_types, plan_validated
from fleetlm.hardware.trace import DEFAULT_PROMPT_EDGES, bucketize, load_azure_trace


def _print_plan(title: str, plan: Plan | None, buckets) -> None:
    if plan is None:
        print(f"{title}: none validates")
        return
    s = plan.sim
    print(f"{title}: {describe(plan)}  ->  ${plan.usd_per_hour:.2f}/hour (planned for x{plan.load_factor:g} the mean rate)")
    print(f"  simulated: {100 * s.attainment:.2f}% of requests within SLO | TTFT p50 {s.ttft_p50:.2f} s, "
          f"p99 {s.ttft_p99:.2f} s | TPOT p50 {1e3 * s.tpot_p50:.0f} ms, p99 {1e3 * s.tpot_p99:.0f} ms | "
          f"queue p99 {s.queue_p99:.2f} s | ${s.usd:.2f} for the trace")
    print("  utilisation: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in s.utilization.items()))
    for b in buckets.buckets:
        slices = plan.routes[b.index]
        names = [e if d is None else f"{e} -> {d}" for e, d in slices]
        share = {n: names.count(n) / len(names) for n in dict.fromkeys(names)}
        print(f"    {b.label:<12} " + ", ".join(f"{n} {100 * v:.0f}%" for n, v in share.items()))


def run_plan(args, devices: dict) -> int:
    slo = parse_slo(args.slo)
    shape = resolve_shape(args.model)
    trace = load_azure_trace(args.trace).scaled(args.rate_scale)
    edges = tuple(int(x) for x in args.prompt_edges.split(",")) if args.prompt_edges else DEFAULT_PROMPT_EDGES
    buckets = bucketize(trace, edges, ())
    if args.devices:
        names = [n.strip() for n in args.devices.split(",") if n.strip()]
        missing = [n for n in names if n not in devices]
        if missing:
            raise ValueError(f"unknown device(s) {missing}; known: {', '.join(devices)}")
    else:
        names = [n for n, d in devices.items() if d.kind == "gpu"]
    names = [n for n in names if n not in set(args.exclude.split(","))]
    longest = int(max(trace.prompt + trace.output))
    types = instance_types(shape, [devices[n] for n in names], longest, dtype=args.dtype)
    if not types:
        raise ValueError(f"{shape.name} fits none of {names} with a {longest}-token KV cache")
    rate = len(trace) / max(trace.duration_s, 1e-9)
    print(f"model {shape.name} ({shape.params / 1e9:.2f} B params, {args.dtype}) | trace {args.trace}: "
          f"{len(trace)} requests over {trace.duration_s / 60:.1f} min ({rate:.2f} req/s, mean prompt "
          f"{trace.prompt.mean():.0f}, mean output {trace.output.mean():.1f} tokens)")
    print(f"SLO: TTFT <= {slo.ttft_s:g} s and TPOT <= {1e3 * slo.tpot_s:g} ms for >= {100 * slo.attainment:g}% "
          f"of requests | instance types: {', '.join(t.name for t in types)}")
    t0 = time.perf_counter()
    disagg = not args.no_disaggregate
    print("heterogeneous search:")
    hetero = plan_validated(types, buckets, trace, slo, slices=args.slices, disaggregate=disagg, log=print)
    homo = {}
    for n in names:
        sub = [t for t in types if t.device.name == n]
        if not sub:
            continue
        print(f"only {n}:")
        p = plan_validated(sub, buckets, trace, slo, slices=args.slices, disaggregate=disagg, log=print)
        if p is not None:
            homo[n] = p
    print(f"(planning and {sum(1 for _ in homo) + 1} validated searches took {time.perf_counter() - t0:.0f} s)\n")
    homo = dict(sorted(homo.items(), key=lambda kv: kv[1].usd_per_hour))
    print("single device type plans (validated): " + ", ".join(
        f"{n} ${p.usd_per_hour:.2f}/h" for n, p in homo.items()) if homo else "no single device type validates")
    best_name = next(iter(homo), None)
    if hetero is not None and best_name and homo[best_name].usd_per_hour < hetero.usd_per_hour:
        # every single-type plan is also a heterogeneous one: the search's bisection over load
        # factors is not exhaustive, so keep the cheaper of the two
        print(f"(the mixed-type search found ${hetero.usd_per_hour:.2f}/h; the {best_name}-only plan is cheaper "
              f"and is the heterogeneous answer too)")
        hetero = homo[best_name]
    _print_plan("heterogeneous plan", hetero, buckets)
    _print_plan(f"best single device type ({best_name})", homo.get(best_name), buckets)
    if args.plot:
        from fleetlm.hardware.plots import plot_plans

        files = plot_plans(args.plot, f"{shape.name}, {args.trace.split('/')[-1]}, "
                                      f"TTFT<={slo.ttft_s:g}s TPOT<={1e3 * slo.tpot_s:g}ms", hetero, homo, buckets)
        print("plots: " + ", ".join(str(f) for f in files))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hetero": _as_dict(hetero), "homogeneous": {n: _as_dict(p) for n, p in homo.items()}}, f, indent=1)
    if hetero is None or best_name is None:
        print("saving vs best single device type: n/a")
        return 1
    saving = 100 * (1 - hetero.usd_per_hour / homo[best_name].usd_per_hour)
    print(f"saving vs best single device type: {saving:.0f}%")
    return 0


def _as_dict(plan: Plan | None):
    if plan is None:
        return None
    s = plan.sim
    return {"usd_per_hour": plan.usd_per_hour, "load_factor": plan.load_factor,
            "pools": [{"name": p.name, "device": p.perf.device.name, "tp": p.perf.tp, "role": p.role,
                       "count": p.count} for p in plan.pools],
            "routes": {str(b): sl for b, sl in plan.routes.items()},
            "sim": {"attainment": s.attainment, "ttft_p99": s.ttft_p99, "tpot_p99": s.tpot_p99,
                    "utilization": s.utilization}}
