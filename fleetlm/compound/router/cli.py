"""``fleet router train`` and ``fleet router eval``.

    fleet router train --data routerbench_zs --policy mf --out routers/rb-mf
    fleet router eval  --router routers/rb-mf --data routerbench_zs --plot rb-mf.png

``--data`` is ``routerbench_zs`` or ``llmrouter`` (train reads the train split, eval the test
split; ``--data-root`` overrides where they live) or a ``.jsonl`` file in our format (see
:mod:`fleetlm.compound.router.data`; ``--prices`` prices token counts). ``eval`` prints the
tables, the routing latency per request (``--latency-prompts``) and, as its last line,
``cost_at_best_quality: 0.xx`` (or ``n/a``).

``add_router_parser(subparsers)`` adds the ``router`` command to the ``fleet`` parser; each
subcommand sets ``func`` (``args.func(args) -> exit code``), like the other commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fleetlm.config import default_of, given


def add_router_parser(subparsers) -> argparse.ArgumentParser:
    r = subparsers.add_parser("router", help="train and evaluate learned routers")
    sub = r.add_subparsers(dest="router_command", required=True)

    t = sub.add_parser("train", help="fit a router on per-query outcome data (train split)")
    _data_args(t)
    t.add_argument("--policy", default="cluster", help="knn | mf | lr | blend | cluster (default cluster)")
    t.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="policy parameter, JSON value (e.g. --param k=40); repeatable")
    t.add_argument("--cost-clusters", type=int, default=16,
                   help="clusters of the per-query cost model; 0 = each model's flat mean cost")
    # The window's defaults live on EncoderConfig; encoder.py imports numpy but not torch.
    from fleetlm.compound.router.encoder import EncoderConfig

    t.add_argument("--head-tokens", type=int,
                   help=f"prompt tokens the router reads from the start {default_of(EncoderConfig, 'head_tokens')}")
    t.add_argument("--tail-tokens", type=int,
                   help=f"prompt tokens the router reads from the end {default_of(EncoderConfig, 'tail_tokens')}; "
                        "a longer window costs routing latency")
    t.add_argument("--out", required=True, help="router folder to write (e.g. routers/NAME)")
    lam = t.add_mutually_exclusive_group()
    lam.add_argument("--lam", type=float, default=0.0, help="cost weight λ (default 0: quality only)")
    lam.add_argument("--budget", type=float, help="calibrate λ: mean USD per query on the train split")
    lam.add_argument("--target-quality", type=float, help="calibrate λ: mean quality on the train split")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="cost-quality evaluation on the test split")
    _data_args(e)
    e.add_argument("--router", required=True, help="router folder written by `router train`")
    e.add_argument("--plot", help="write the Pareto plot here (PNG; needs matplotlib)")
    e.add_argument("--pair", help="STRONG,WEAK: also report APGR and CPT for these two models")
    e.add_argument("--latency-prompts", type=int, default=200, metavar="N",
                   help="time routing on the first N test prompts, one at a time (default 200; 0: skip)")
    e.set_defaults(func=cmd_eval)
    return r


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="routerbench_zs | llmrouter | PATH.jsonl")
    p.add_argument("--data-root", help="folder holding the data set (default ../shared/data/routing/NAME)")
    p.add_argument("--prices", help='JSON file {model: {"input": $/M, "output": $/M}} for token counts')


def _load(args, split: str):
    from fleetlm.compound.router.data import load_dataset

    prices = json.loads(Path(args.prices).read_text()) if args.prices else None
    root = Path(args.data_root) if args.data_root else None
    return load_dataset(args.data, split, root=root, prices=prices)


def _params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_train(args) -> int:
    import numpy as np

    from fleetlm.compound.router.data import to_arrays
    from fleetlm.compound.router.encoder import EncoderConfig, RoutingEncoder
    from fleetlm.compound.router.router import train_router

    try:
        window = given(EncoderConfig, head_tokens=args.head_tokens, tail_tokens=args.tail_tokens)
        examples = _load(args, "train")
        router = train_router(examples, policy=args.policy, params=_params(args.param),
                              encoder=RoutingEncoder(window), data_name=args.data, lam=args.lam,
                              cost_clusters=args.cost_clusters or None)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.budget is not None or args.target_quality is not None:
        arrays = to_arrays(examples, router.models)
        X = router.embed(arrays.prompts)
        try:
            router.calibrate(X, arrays.costs, budget=args.budget,
                             target_quality=args.target_quality, scores=arrays.scores)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        router.card["calibration"] = {"budget_usd_per_query": args.budget,
                                      "target_quality": args.target_quality}
    router.save(args.out)
    print(f"router: {len(examples)} train queries, {len(router.models)} models, policy "
          f"{args.policy}, window {window.head_tokens}+{window.tail_tokens} tokens, "
          f"lam {router.lam:.4g}; expected USD/query: "
          + ", ".join(f"{m}={c:.2e}" for m, c in zip(router.models, np.asarray(router.expected_cost))))
    print(f"saved to {args.out}")
    return 0


def cmd_eval(args) -> int:
    from fleetlm.compound.router.data import to_arrays
    from fleetlm.compound.router.evaluate import evaluate, format_report, latency_summary, plot_pareto, time_rank
    from fleetlm.compound.router.router import Router

    try:
        router = Router.load(args.router)
        arrays = to_arrays(_load(args, "test"), router.models)
        pair = tuple(args.pair.split(",")) if args.pair else None
        if pair and (len(pair) != 2 or any(m not in router.models for m in pair)):
            raise ValueError(f"--pair needs two of the router's models, got {args.pair!r}")
        if args.latency_prompts < 0:
            raise ValueError(f"--latency-prompts must be >= 0, got {args.latency_prompts}")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    X = router.embed(arrays.prompts)
    report = evaluate(router.quality(X), arrays.scores, arrays.costs, router.cost_weights(X),
                      router.models, pair=pair)
    if args.latency_prompts:
        ms = time_rank({"router": router}, arrays.prompts[:args.latency_prompts])["router"]
        report.latency = latency_summary(ms, router.encoder.config)
    if args.plot:
        plot_pareto(report, args.plot, title=f"{args.router} on {args.data}")
        print(f"plot: {args.plot}")
    print(format_report(report))  # last line: cost_at_best_quality
    return 0
