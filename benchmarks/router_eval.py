"""Router evaluation on public per-query outcome data: quality, cost and routing latency.

For ``routerbench_zs`` and ``llmrouter`` (../shared/data/routing): train a router on the train
split, save it and load it back (what the server does), evaluate on the test split (each
model, random, oracle, the λ-sweep curve, AIQ, APGR/CPT for one strong/weak pair,
``cost_at_best_quality``), and time ``Router.rank(prompt)`` per request on this CPU, MiniLM
embedding included. Writes ``benchmarks/results/router_eval.txt`` and one Pareto PNG per data
set (``router_eval_<data>.png``, needs matplotlib).

    .venv/bin/python benchmarks/router_eval.py [--policy cluster] [--param k=v ...]
        [--latency-window 8+32]   # also time another prompt window, alternating
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fleetlm.compound.router.data import default_data_root, load_dataset, to_arrays
from fleetlm.compound.router.encoder import EncoderConfig, RoutingEncoder
from fleetlm.compound.router.evaluate import evaluate, format_report, latency_summary, plot_pareto, time_rank
from fleetlm.compound.router.router import Router, train_router

RESULTS = Path(__file__).parent / "results"
# (strong, weak) for RouteLLM's two-model metrics: GPT-4 vs Mixtral as in RouteLLM; for
# llmrouter its most accurate train model vs the cheap-tier model closest to it.
PAIRS = {
    "routerbench_zs": ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"),
    "llmrouter": ("llama-3.1-nemotron-51b-instruct", "llama-3.1-8b-instruct"),
}


def run(data: str, policy: str, params: dict, encoder: RoutingEncoder, out: list[str],
        latency_windows: list[tuple[int, int]] = ()) -> None:
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    t0 = time.perf_counter()
    router = train_router(train, policy=policy, params=params, encoder=encoder, data_name=data)
    fit_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:  # round trip: evaluate what the server would load
        router.save(tmp)
        router = Router.load(tmp, embedder=encoder.embedder)
    arrays = to_arrays(test, router.models)
    X = router.embed(arrays.prompts)
    report = evaluate(router.quality(X), arrays.scores, arrays.costs, router.cost_weights(X),
                      router.models, pair=PAIRS[data])
    png = RESULTS / f"router_eval_{data}.png"
    try:
        plot_pareto(report, png, title=f"{data}: {policy} router (train split) on the test split")
        plot_note = f"plot: {png.relative_to(RESULTS.parent.parent)}"
    except ImportError:
        plot_note = "plot: skipped (pip install matplotlib)"

    # Timed side by side, alternating on each prompt: the trained router and, for each
    # --latency-window, the same policy reading a different window (timing only: its
    # embeddings do not match the policy's, but the arithmetic per request is the same).
    timed = {"trained": router}
    for h, t in latency_windows:
        timed[f"{h}+{t}"] = Router(router.models, router.policy, router.expected_cost, router.lam,
                                   cost_model=router.cost_model,
                                   encoder=RoutingEncoder(EncoderConfig(h, t), embedder=encoder.embedder))
    lat = time_rank(timed, arrays.prompts[:300])
    report.latency = latency_summary(lat.pop("trained"), router.encoder.config)
    extra = [f"  same rank() reading a {name} token window instead: p50 {np.median(v):.1f} ms, "
             f"p90 {np.percentile(v, 90):.1f} ms (alternating with the routing latency line)"
             for name, v in lat.items()]
    out += [f"## {data}: {len(train)} train / {len(test)} test queries, {len(router.models)} models, "
            f"policy {policy} {router.policy.params} (embed+fit {fit_s:.1f} s)",
            format_report(report), *extra, plot_note, ""]
    print("\n".join(out[-4 - len(extra):]), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="cluster")
    ap.add_argument("--param", action="append", default=[], help="policy KEY=VALUE (JSON value)")
    ap.add_argument("--data", nargs="+", default=list(PAIRS))
    ap.add_argument("--latency-window", action="append", default=[], metavar="HEAD+TAIL",
                    help="also time rank() reading this token window (e.g. 8+32), side by side")
    args = ap.parse_args(argv)
    if not default_data_root().is_dir():
        print(f"skip: routing data not found at {default_data_root()} (see ../shared/data/SOURCES.md)")
        return 0
    from fleetlm.compound.router.cli import _params

    import torch

    RESULTS.mkdir(exist_ok=True)
    out = [f"# benchmarks/router_eval.py  ({time.strftime('%Y-%m-%d %H:%M')}, "
           f"torch {torch.__version__}, {torch.get_num_threads()} threads)", ""]
    encoder = RoutingEncoder()
    windows = [tuple(int(n) for n in w.split("+")) for w in args.latency_window]
    for data in args.data:
        run(data, args.policy, _params(args.param), encoder, out, windows)
    (RESULTS / "router_eval.txt").write_text("\n".join(out))
    print(f"wrote {RESULTS / 'router_eval.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
