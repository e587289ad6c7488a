"""Trace loading and buckets, capacity, the MILP planner and the simulator, on small
synthetic traces (fast); the full Azure trace only in the `slow` test at the end."""

from __future__ import annotations

import numpy as np
import pytest

from fleetlm.hardware.capacity import SLO, capacity, parse_slo
from fleetlm.hardware.devices import CATALOG
from fleetlm.hardware.perfmodel import NAMED_SHAPES, Perf
from fleetlm.hardware.planner import instance_types, plan_validated, solve
from fleetlm.hardware.simulator import SimPool, simulate
from fleetlm.hardware.trace import Trace, bucketize, load_azure_trace, shared_trace

SHARED_TRACE = shared_trace()

L8 = NAMED_SHAPES["Llama-3.1-8B"]


def write_trace(path, rows):
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:{int(t) // 60:02d}:{int(t) % 60:02d}.{int(round((t % 1) * 1e7)):07d},{p},{o}\n"
        for t, p, o in rows))
    return path


def synthetic(n=600, rate=4.0, seed=0, long_share=0.2) -> Trace:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    long = rng.random(n) < long_share
    prompt = np.where(long, rng.integers(6000, 7500, n), rng.integers(50, 400, n))
    return Trace(t - t[0], prompt, rng.integers(10, 60, n))


def test_azure_trace_loads_sorted_with_relative_times(tmp_path):
    path = write_trace(tmp_path / "t.csv", [(3.5, 100, 10), (1.25, 5000, 20), (2.0, 300, 1)])
    tr = load_azure_trace(path)
    assert list(tr.prompt) == [5000, 300, 100] and tr.arrival_s[0] == 0.0
    assert tr.arrival_s[2] == pytest.approx(2.25)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected columns"):
        load_azure_trace(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError):
        load_azure_trace(tmp_path / "missing.csv")


def test_buckets_partition_the_trace():
    tr = synthetic()
    bs = bucketize(tr, (256, 1024, 4096), ())
    assert sum(b.count for b in bs.buckets) == len(tr)
    assert sum(b.rate for b in bs.buckets) == pytest.approx(len(tr) / tr.duration_s)
    for i in range(len(tr)):
        assert bs.bucket_of(int(tr.prompt[i]), int(tr.output[i])) == bs.of_request[i]
    assert {b.label for b in bs.buckets} == {"p0-256", "p256-1024", "p4096+"}


def test_parse_slo():
    assert parse_slo("ttft_p99=2,tpot_p99=100ms") == SLO(2.0, 0.1)
    for bad in ("ttft_p99=2", "ttft_p99=x,tpot_p99=1", "ttft_p99=1,tpot_p99=1,foo=2"):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_capacity_orders_devices_and_respects_the_slo():
    bs = bucketize(synthetic(), (1024,), ()).buckets
    short, long = bs
    slo = SLO(1.0, 0.1)
    h100, l4 = Perf(L8, CATALOG["H100-SXM"], 1), Perf(L8, CATALOG["L4"], 1)
    assert capacity(h100, short, slo) > capacity(l4, short, slo) > 0
    # an L4 needs > 1 s for a 7k-token prompt of an 8B model: it cannot meet a 1 s TTFT
    assert capacity(l4, long, slo) == 0.0 and capacity(h100, long, slo) > 0
    assert capacity(l4, long, SLO(10.0, 0.2)) > 0


def test_simulator_matches_the_model_for_a_lone_request():
    perf = Perf(L8, CATALOG["A100-80GB"], 1)
    tr = Trace(np.array([0.0]), np.array([1000]), np.array([11]))
    res = simulate({"p": SimPool(perf, "co", 1)}, lambda i: ("p", None), tr, SLO(5, 1))
    assert res.ttft[0] == pytest.approx(perf.prefill_time(1000), rel=1e-6)
    assert res.tpot[0] == pytest.approx(perf.decode_step(1, 1000 + 5), rel=0.01)
    assert res.attainment == 1.0


def test_simulator_queues_under_overload_and_split_pools_hand_over():
    tr = synthetic(n=400, rate=20.0, long_share=0.5)
    slo = SLO(2.0, 0.1)
    one = simulate({"p": SimPool(Perf(L8, CATALOG["L4"], 1), "co", 1)}, lambda i: ("p", None), tr, slo)
    many = simulate({"p": SimPool(Perf(L8, CATALOG["H100-SXM"], 1), "co", 3)}, lambda i: ("p", None), tr, slo)
    assert one.attainment < 0.5 < many.attainment and one.queue_p99 > many.queue_p99
    split = simulate({"pre": SimPool(Perf(L8, CATALOG["H100-SXM"], 1), "prefill", 2),
                      "dec": SimPool(Perf(L8, CATALOG["A100-80GB"], 1), "decode", 1)},
                     lambda i: ("pre", "dec"), tr, slo)
    assert np.isfinite(split.tpot).all() and split.utilization["dec"] > 0


def test_planner_mixes_devices_when_that_is_cheaper():
    """Short prompts are cheapest on L4s, 7k-token prompts need a big GPU for a 1 s TTFT: the
    heterogeneous plan uses both and costs less than either device type alone."""
    tr = synthetic(n=1500, rate=6.0, long_share=0.05)
    bs = bucketize(tr, (1024,), ())
    slo = SLO(1.0, 0.1)
    devs = [CATALOG["L4"], CATALOG["H100-SXM"]]
    types = [t for t in instance_types(L8, devs, 8192) if t.tp == 1]  # one device per replica
    hetero = plan_validated(types, bs, tr, slo, slices=2, disaggregate=False)
    assert hetero is not None and hetero.sim.attainment >= 0.99
    only = {d.name: plan_validated([t for t in types if t.device is d], bs, tr, slo, slices=2, disaggregate=False)
            for d in devs}
    assert only["L4"] is None  # L4s cannot serve the long prompts at all
    assert hetero.usd_per_hour <= only["H100-SXM"].usd_per_hour
    routes = hetero.bucket_pools()
    assert all(n.startswith("H100") for n in routes[1])  # long prompts: the big GPU
    assert solve([t for t in types if t.device.name == "L4"], bs, slo) is None


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_TRACE.is_file(), reason=f"Azure trace not found at {SHARED_TRACE} "
                                                       "(see ../shared/data/SOURCES.md)")
def test_fleet_plan_on_the_azure_code_trace(capsys, tmp_path):
    from fleetlm.cli import main

    rc = main(["plan", "--model", "Llama-3.1-8B", "--trace", str(SHARED_TRACE), "--slo", "ttft_p99=2,tpot_p99=0.1",
               "--slices", "2", "--plot", str(tmp_path / "p")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert lines[-1].startswith("saving vs best single device type: ") and lines[-1].endswith("%")
    assert (tmp_path / "p_cost.png").is_file()
