"""Train and measure `router/auto`: one model id that sends each query to the expert or
program that answers it best.

    python benchmarks/auto_router.py                       # train experts/router, then measure
    python benchmarks/auto_router.py --skip-train          # measure the shipped router

1. Routing data is measured, not assumed: every candidate answers every training query
   (contact extraction, arithmetic word problems and tool calls from the experts' own data
   generators, with seeds of their own), each answer is scored exactly, and the router
   (fleetlm.compound.router, kNN over MiniLM embeddings) learns which candidate answers what.
   It is saved to experts/router, which `make serve` serves as `router/auto`
   (experts/fleet.toml).
2. A mixed held-out workload through a real server with the real `openai` client: the
   extract-contact expert's 100 held-out texts (first --test-per-task), arithmetic problems
   no expert saw, and BFCL simple_python questions. Each candidate alone, then
   `router/auto`: accuracy per task and overall, and routing accuracy (the share of queries
   routed to a candidate that answers them correctly, where one does).

Writes benchmarks/results/auto_router.txt. The last line is
`auto: NN.N% vs best single model id NN.N% (MODEL)`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from gemma_server import serve_gemma

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
ROUTER = REPO / "experts" / "router"
FLEET_TOML = REPO / "experts" / "fleet.toml"
CANDIDATES = {"base": "gemma-3-270m", "extract": "gemma-3-270m:extract-contact", "arith": "compound/arith",
              "fc": "gemma-3-270m:fc"}


@dataclass
class Item:
    task: str
    body: dict  # chat-completions body without "model"
    expected: object
    prompt: str  # what the router reads (the last user message)


def score(item: Item, status: int, body: dict) -> bool:
    from fleetlm.compound.programs.builtin import is_json
    from fleetlm.evals.bfcl import parse_response
    from fleetlm.evals.bfcl_checker import check
    from fleetlm.tune.evaluate import score_arith, score_extract

    if status != 200:
        return False
    message = body["choices"][0]["message"]
    if item.task == "extract":
        return score_extract(message.get("content") or "", item.expected)
    if item.task == "arith":
        return score_arith(message.get("content") or "", item.expected)
    if item.task == "bfcl":
        question, tools = item.expected
        calls = parse_response(body, tools)
        return check(question.category, question.functions, calls, question.ground_truth or []).valid
    # tool calls from the fc generator: the same calls, in any order; no call where none is due
    got = sorted((c["function"]["name"], json.dumps(json.loads(c["function"]["arguments"]), sort_keys=True))
                 for c in message.get("tool_calls") or [] if is_json(c["function"]["arguments"]))
    return got == item.expected


def extract_items(n: int, seed: int, *, test: bool) -> list[Item]:
    from fleetlm.tune.datagen import extract

    with tempfile.TemporaryDirectory() as tmp:
        train, held = extract.generate(Path(tmp), n_train=max(n, 1), n_test=n if test else 1, seed=seed)
        rows = [json.loads(line) for line in (held if test else train).read_text().splitlines()][:n]
    if test:
        return [Item("extract", {"messages": r["messages"], "max_tokens": 64, "temperature": 0}, r["expected"],
                     r["messages"][-1]["content"]) for r in rows]
    return [Item("extract", {"messages": r["messages"][:-1], "max_tokens": 64, "temperature": 0},
                 json.loads(r["messages"][-1]["content"]), r["messages"][0]["content"]) for r in rows]


def arith_items(n: int, seed: int) -> list[Item]:
    """n problems; none the arith-steps expert saw (its recipe: seed 0, 1,200 train, 100 test)."""
    from fleetlm.tune.datagen import arith

    with tempfile.TemporaryDirectory() as tmp:
        seen_train, seen_test = arith.generate(Path(tmp) / "seen", n_train=1200, seed=0)
        seen = {json.loads(line)["messages"][0]["content"] for line in seen_train.read_text().splitlines()}
        seen |= {arith.user_text(json.loads(line)["question"]) for line in seen_test.read_text().splitlines()}
        _, test = arith.generate(Path(tmp) / "new", n_train=1, n_test=2 * n, seed=seed)
        rows = [json.loads(line) for line in test.read_text().splitlines()]
        rows = [r for r in rows if arith.user_text(r["question"]) not in seen][:n]
    return [Item("arith", {"messages": [{"role": "user", "content": r["question"]}], "max_tokens": 96,
                           "temperature": 0}, r["expected"], r["question"]) for r in rows]


def fc_items(n: int, seed: int) -> list[Item]:
    from fleetlm.tune.datagen.fc import generate_rows

    out = []
    for row in generate_rows(n, seed):
        calls = row["messages"][-1].get("tool_calls") or []
        expected = sorted((c["function"]["name"], json.dumps(json.loads(c["function"]["arguments"]), sort_keys=True))
                          for c in calls)
        question = next(m["content"] for m in reversed(row["messages"][:-1]) if m["role"] == "user")
        out.append(Item("fc", {"messages": row["messages"][:-1], "tools": row["tools"], "tool_choice": "auto",
                               "max_tokens": 256, "temperature": 0}, expected, question))
    return out


def bfcl_items(n: int) -> list[Item]:
    from fleetlm.evals.bfcl import build_request, load_category, to_openai_tools

    out = []
    for q in load_category("simple_python", limit=n):
        tools = to_openai_tools(q.functions)
        body = build_request(q, tools, model="x", max_tokens=256)
        body.pop("model")
        out.append(Item("bfcl", body, (q, tools), q.turns[0][-1]["content"]))
    return out


def start_server(with_router: bool):
    from fleetlm.fleet_toml import load_fleet_toml

    fleet = load_fleet_toml(str(FLEET_TOML))
    if not with_router:
        fleet.routers = []
    return serve_gemma(fleet=fleet, adapters_dir=str(REPO / "experts"), max_pending_requests=512,
                       enable_embeddings=False)


def ask_all(base: str, model: str, items: list[Item], concurrency: int) -> list[tuple[bool, str]]:
    """(correct, served_by) per item."""
    def one(item: Item):
        r = http.post(f"{base}/chat/completions", json={**item.body, "model": model})
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        return score(item, r.status_code, body), r.headers.get("x-fleetlm-served-by", "")

    with httpx.Client(timeout=600) as http, ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, items))


def train(args) -> list[str]:
    from fleetlm.compound.router.data import RoutingExample
    from fleetlm.compound.router.router import train_router

    items = (extract_items(args.train_per_task, seed=11, test=False) + arith_items(args.train_per_task, seed=12)
             + fc_items(args.train_per_task, seed=13))
    base, server, llm = start_server(with_router=False)
    try:
        outcomes = {name: ask_all(base, model, items, args.concurrency) for name, model in CANDIDATES.items()}
    finally:
        server.should_exit = True
        time.sleep(1)
        llm.shutdown()
    examples = [RoutingExample(item.prompt, {n: float(outcomes[n][i][0]) for n in CANDIDATES},
                               {n: 1e-6 for n in CANDIDATES}, task=item.task) for i, item in enumerate(items)]
    router = train_router(examples, policy="knn", params={"k": args.k})
    router.save(ROUTER)
    (ROUTER / "train_outcomes.jsonl").write_text("".join(
        json.dumps({"prompt": e.prompt, "scores": e.scores, "costs": e.costs, "task": e.task}) + "\n"
        for e in examples))
    return summary(examples, args.k)


def summary(examples, k) -> list[str]:
    """What each candidate scored on the routing data (from experts/router/train_outcomes.jsonl)."""
    lines = [f"routing data: {len(examples)} training queries (seeds 11-13), every candidate asked; "
             f"accuracy of each candidate on them:"]
    for name in CANDIDATES:
        per_task = defaultdict(list)
        for e in examples:
            per_task[e.task].append(e.scores[name])
        lines.append(f"  {CANDIDATES[name]:<30} " + "  ".join(f"{t} {sum(v) / len(v):6.1%}"
                                                               for t, v in per_task.items()))
    lines.append(f"router: kNN (k={k}) over MiniLM, in {ROUTER.relative_to(REPO)}")
    return lines


def measure(args) -> list[str]:
    items = (extract_items(args.test_per_task, seed=0, test=True) + arith_items(args.test_per_task, seed=2026)
             + bfcl_items(args.test_per_task))
    base, server, llm = start_server(with_router=True)
    try:
        results = {model: ask_all(base, model, items, args.concurrency)
                   for model in [*CANDIDATES.values(), "router/auto"]}
    finally:
        server.should_exit = True
    tasks = list(dict.fromkeys(i.task for i in items))
    lines = [f"mixed held-out workload: {len(items)} queries ({args.test_per_task} each: "
             f"{', '.join(tasks)}), greedy, {args.concurrency} at a time",
             f"{'model id':<30} " + " ".join(f"{t:>8}" for t in tasks) + f" {'overall':>8}"]
    overall = {}
    for model, res in results.items():
        by_task = defaultdict(list)
        for item, (ok, _) in zip(items, res):
            by_task[item.task].append(ok)
        overall[model] = sum(ok for ok, _ in res) / len(res)
        lines.append(f"{model:<30} " + " ".join(f"{sum(v) / len(v):>8.1%}" for v in by_task.values())
                     + f" {overall[model]:>8.1%}")
    served = [s for _, s in results["router/auto"]]
    answerable = [i for i in range(len(items)) if any(results[m][i][0] for m in CANDIDATES.values())]
    right = sum(1 for i in answerable if any(results[m][i][0] for m in CANDIDATES.values() if m == served[i]))
    lines.append(f"routing accuracy: {right}/{len(answerable)} = {right / max(1, len(answerable)):.1%} of the "
                 "queries some candidate answers correctly went to one that does")
    lines.append("routed to: " + ", ".join(f"{m} {c}" for m, c in Counter(served).most_common()))
    best = max(CANDIDATES.values(), key=lambda m: overall[m])
    lines.append(f"auto: {overall['router/auto']:.1%} vs best single model id {overall[best]:.1%} ({best})")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-per-task", type=int, default=60)
    ap.add_argument("--test-per-task", type=int, default=30)
    ap.add_argument("--k", type=int, default=5, help="neighbours of the kNN router")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--skip-train", action="store_true", help="measure the router already in experts/router")
    args = ap.parse_args()
    if args.skip_train:
        from fleetlm.compound.router.data import load_jsonl

        config = json.loads((ROUTER / "router.json").read_text())
        lines = summary(load_jsonl(ROUTER / "train_outcomes.jsonl"), config["params"].get("k"))
    else:
        lines = train(args)
    for line in lines:
        print(line, flush=True)
    measured = measure(args)
    print("\n".join(measured))
    RESULTS.mkdir(exist_ok=True)
    cmd = " ".join(["python benchmarks/auto_router.py", *sys.argv[1:]])
    (RESULTS / "auto_router.txt").write_text(f"# {cmd}\n" + "\n".join(lines + measured) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
