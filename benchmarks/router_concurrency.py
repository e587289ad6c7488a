"""Routing under concurrent requests: `Router.rank` from K threads at once, with concurrent
embeddings coalesced into shared forwards (the default) and without (one forward per request).

The server ranks each routed request on a worker thread (`asyncio.to_thread`), so K clients
mean up to K concurrent `rank` calls. The router is trained on routerbench_zs's train split;
the prompts are its test prompts. For each K, both settings run the same 240 prompts, in
alternating rounds (a shared machine's drift hits both alike). Per-call latency p50/p90 and
throughput are printed and written to ``benchmarks/results/router_concurrency.txt``.

    .venv/bin/python benchmarks/router_concurrency.py [--threads 1 4 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fleetlm.compound.router.data import default_data_root, load_dataset
from fleetlm.compound.router.encoder import RoutingEncoder
from fleetlm.compound.router.router import Router, train_router

RESULTS = Path(__file__).parent / "results"
N_PROMPTS = 240


def timed_ranks(router: Router, prompts: list[str], threads: int) -> tuple[np.ndarray, float]:
    """(per-call ms, wall seconds) for ranking every prompt with `threads` workers."""
    def one(p):
        t = time.perf_counter()
        router.rank(p)
        return (time.perf_counter() - t) * 1e3

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        ms = np.array(list(pool.map(one, prompts)))
    return ms, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if not default_data_root().is_dir():
        print(f"skip: routing data not found at {default_data_root()} (see ../shared/data/SOURCES.md)")
        return 0
    import torch

    base = train_router(load_dataset("routerbench_zs", "train"), policy="cluster", data_name="routerbench_zs")
    prompts = [ex.prompt for ex in load_dataset("routerbench_zs", "test")][:N_PROMPTS]
    routers = {}
    for name, coalesce in (("coalesced", True), ("one by one", False)):
        encoder = RoutingEncoder(base.encoder.config, embedder=base.encoder.embedder, coalesce=coalesce)
        routers[name] = Router(base.models, base.policy, base.expected_cost, base.lam,
                               encoder=encoder, cost_model=base.cost_model)
        routers[name].rank(prompts[0])  # warm-up
    out = [f"# benchmarks/router_concurrency.py  ({time.strftime('%Y-%m-%d %H:%M')}, torch "
           f"{torch.__version__}, {torch.get_num_threads()} threads), routerbench_zs, {N_PROMPTS} "
           f"test prompts per run, {args.rounds} rounds, window "
           f"{base.encoder.config.head_tokens}+{base.encoder.config.tail_tokens}", "",
           f"{'clients':>7}  {'embedding':<10}  {'p50 ms':>7}  {'p90 ms':>7}  {'ranks/s':>7}"]
    print("\n".join(out), flush=True)
    for k in args.threads:
        got = {name: ([], 0.0) for name in routers}
        for _ in range(args.rounds):
            for name, router in routers.items():
                ms, wall = timed_ranks(router, prompts, k)
                got[name] = (got[name][0] + [ms], got[name][1] + wall)
        for name, (runs, wall) in got.items():
            ms = np.concatenate(runs)
            line = (f"{k:>7}  {name:<10}  {np.median(ms):7.1f}  {np.percentile(ms, 90):7.1f}  "
                    f"{len(ms) / wall:7.1f}")
            out.append(line)
            print(line, flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "router_concurrency.txt").write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
