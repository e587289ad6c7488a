"""DAG executor vs one call at a time, on NESTFUL's executable sequences and ParallelQA-shaped
plans. Writes benchmarks/results/tool_dag.txt.

    .venv/bin/python benchmarks/tool_dag.py [--median-ms 50] [--sigma 0.4] [--seed 0] [--limit N]

Tools and latencies (the real APIs are RapidAPI services this benchmark cannot call):
* NESTFUL (../shared/data/function_calling/nestful/executable-*.json, 85 sequences, 39
  tools): every tool is a deterministic stand-in built from its spec. It checks the spec's
  required parameters (a missing one is an error, as the API's 400 would be) and returns an
  object shaped like the spec's `output_parameters`, whose values are derived from a hash of
  the tool name and arguments (string fields named like a rate or price hold a numeric
  string, as Alpha Vantage's quotes do). The arithmetic tool
  (CipherCircuit_Math_Assistant_CalculateAllArithmeticOperations) really computes. A
  reference to a field the spec does not list fails in both modes alike.
* ParallelQA (../shared/data/function_calling/llmcompiler, 113 questions): for a question
  with `branch` = b, the plan LLMCompiler's planner writes for it: b independent `search`
  calls, b `math` calls each scaling one search result by the question's i-th modifier, then
  join() (the joiner compares). It is written as plan text and parsed with `parse_plan`.
* Each call sleeps a latency drawn from a lognormal distribution (median --median-ms,
  log-sd --sigma) seeded by (seed, plan, tool, arguments): the same call gets the same
  latency in both modes, and a rerun gets the same latencies.

Both modes run the same executor (`max_concurrency=1` is one call at a time, in plan order);
the benchmark asserts that they produce the same results, errors and final answers, and
prints the speedup per plan width (`Plan.width()`: the most calls on one dependency level)
next to the ideal speedup (sum of call durations / critical path).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import hashlib
import json
import math
import operator
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

from fleetlm.compound.tools.executor import ExecutorConfig, execute
from fleetlm.compound.tools.plan import Plan, PlanError, parse_plan, plan_from_nestful, substitute
from fleetlm.config import shared_data

DATA = shared_data("function_calling")
RESULTS = Path(__file__).parent / "results"
MATH_TOOL = "CipherCircuit_Math_Assistant_CalculateAllArithmeticOperations"
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def arithmetic(text: str) -> float:
    """Evaluate + - * / ** and parentheses over numbers; ValueError for anything else."""
    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not arithmetic: {text!r}")

    try:
        return float(ev(ast.parse(text.replace("^", "**"), mode="eval").body))
    except SyntaxError:
        raise ValueError(f"not arithmetic: {text!r}") from None


def _hash(*parts) -> int:
    return int(hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:15], 16)


def synth(schema: dict, seed: int, name: str):
    """A deterministic value shaped like a (loosely written) JSON-schema fragment."""
    h = _hash(seed, name)
    schema = schema if isinstance(schema, dict) else {}  # some specs give a bare description
    kind = str(schema.get("type", "object" if "properties" in schema else "string")).lower()
    if kind == "object":
        return {k: synth(v, seed, f"{name}.{k}") for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        return [synth(items if isinstance(items, dict) else {}, seed, f"{name}[{i}]") for i in range(2)]
    if kind in ("number", "float"):
        return round(h % 100_000 / 100, 2)
    if kind == "integer":
        return h % 100_000
    if kind == "boolean":
        return bool(h & 1)
    if re.search(r"rate|price", name.rsplit(".", 1)[-1], re.I):  # quotes come as numeric strings
        return f"{h % 100_000 / 1000:.4f}"
    return f"{name.rsplit('.', 1)[-1]}-{h % 10**8:08d}"


class Latency:
    def __init__(self, seed: int, median_s: float, sigma: float):
        self.seed, self.mu, self.sigma = seed, math.log(median_s), sigma

    def __call__(self, plan_key: str, tool: str, args: dict) -> float:
        return random.Random(_hash(self.seed, plan_key, tool, args)).lognormvariate(self.mu, self.sigma)


def nestful_tools(specs: list[dict], latency: Latency, plan_key: str) -> dict:
    def make(spec):
        name, params = spec["name"], spec.get("query_parameters") or {}
        required = [k for k, v in params.items() if v.get("required")]

        async def call(**args):
            await asyncio.sleep(latency(plan_key, name, args))
            missing = [k for k in required if k not in args]
            if missing:
                raise ValueError(f"{name}: missing required parameter(s) {missing}")
            if name == MATH_TOOL:
                value = arithmetic(str(args["numbers"]))
                return {"answer": round(value, int(args.get("decimalPlaces", 2)))}
            seed = _hash(name, args)
            return {k: synth(v, seed, k) for k, v in (spec.get("output_parameters") or {}).items()}
        return call

    return {s["name"]: make(s) for s in specs}


def parallelqa_tools(latency: Latency, plan_key: str) -> dict:
    async def search(query: str):
        await asyncio.sleep(latency(plan_key, "search", {"query": query}))
        return {"title": query.split(": ", 1)[-1][:40], "value": 100 + _hash(query) % 9_900}

    async def math_(expression: str):
        await asyncio.sleep(latency(plan_key, "math", {"expression": expression}))
        return arithmetic(expression)

    return {"search": search, "math": math_}


def parallelqa_plan(q: dict) -> Plan:
    b = q["branch"]
    mods = re.findall(r"(\d+(?:\.\d+)?)\s*(%|times)", q["question"])
    factors = [1 + float(v) / 100 if u == "%" else float(v) for v, u in mods] if len(mods) == b else [1.0] * b
    queries = [f"{q['id']}.{i + 1}: {q['question']}" for i in range(b)]
    lines = [f"{i + 1}. search(query={json.dumps(text)})" for i, text in enumerate(queries)]
    lines += [f'{b + i + 1}. math(expression="${i + 1}.value * {factors[i]}")' for i in range(b)]
    return parse_plan("\n".join(lines + [f"{2 * b + 1}. join()"]))


def final_answer(plan: Plan, ex) -> object:
    if plan.result is None:  # ParallelQA: the joiner picks the largest scaled value
        values = [ex.results.get(c.id) for c in plan.calls if c.tool == "math"]
        return None if None in values else max(range(len(values)), key=values.__getitem__)
    try:
        return substitute(plan.result, ex.results)
    except PlanError as exc:
        return f"unresolved: {exc}"


async def run_one(plan: Plan, tools: dict) -> tuple:
    seq = await execute(plan, tools, ExecutorConfig(max_concurrency=1))
    dag = await execute(plan, tools)
    assert seq.results == dag.results, "DAG and sequential results differ"
    assert seq.errors == dag.errors, f"errors differ: {seq.errors} vs {dag.errors}"
    answer = final_answer(plan, dag)
    assert final_answer(plan, seq) == answer
    durations = {r.id: r.duration_s or 0.0 for r in seq.trace}
    finish = {}
    for c in plan.calls:
        finish[c.id] = max((finish[d] for d in c.deps if d in finish), default=0.0) + durations[c.id]
    return seq.wall_s, dag.wall_s, sum(durations.values()), max(finish.values()), dag.errors


async def main_async(args) -> list[str]:
    latency = Latency(args.seed, args.median_ms / 1000, args.sigma)
    work = []  # (source, key, plan, tools)
    specs = json.loads((DATA / "nestful" / "executable-spec.json").read_text())
    for i, item in enumerate(json.loads((DATA / "nestful" / "executable-data.json").read_text())[: args.limit]):
        work.append(("nestful", plan_from_nestful(item["output"]), nestful_tools(specs, latency, f"n{i}")))
    for q in json.loads((DATA / "llmcompiler" / "parallelqa_dataset.json").read_text())[: args.limit]:
        work.append(("parallelqa", parallelqa_plan(q), parallelqa_tools(latency, f"p{q['id']}")))
    rows = defaultdict(lambda: {"plans": 0, "calls": 0, "seq": 0.0, "dag": 0.0, "work": 0.0, "path": 0.0, "errors": 0})
    why = defaultdict(int)  # first error of each plan that had one, shortened
    t0 = time.monotonic()
    for source, plan, tools in work:
        seq_s, dag_s, work_s, path_s, errors = await run_one(plan, tools)
        if errors:
            why[f"{source}: " + re.sub(r"\d{3,}", "N", next(iter(errors.values())))[:110]] += 1
        for key in ((source, plan.width()), (source, "all")):
            r = rows[key]
            r["plans"] += 1
            r["calls"] += len(plan.calls)
            r["seq"] += seq_s
            r["dag"] += dag_s
            r["work"] += work_s
            r["path"] += path_s
            r["errors"] += bool(errors)
    out = [f"tool_dag: {len(work)} plans, latency lognormal(median {args.median_ms:g} ms, sigma {args.sigma}), "
           f"seed {args.seed}; {time.monotonic() - t0:.1f} s",
           "results, errors and final answers identical in both modes for every plan (asserted)", "",
           f"{'source':<11} {'width':>5} {'plans':>5} {'calls':>5} {'with errors':>11} {'one-at-a-time s':>15} "
           f"{'DAG s':>7} {'speedup':>7} {'ideal':>6}"]
    for (source, width), r in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all", str(kv[0][1]).zfill(3))):
        out.append(f"{source:<11} {width:>5} {r['plans']:>5} {r['calls']:>5} {r['errors']:>11} {r['seq']:>15.2f} "
                   f"{r['dag']:>7.2f} {r['seq'] / r['dag']:>6.2f}x {r['work'] / r['path']:>5.2f}x")
    wide = [r for (s, w), r in rows.items() if w != "all" and w >= 4]
    if wide:
        seq, dag = sum(r["seq"] for r in wide), sum(r["dag"] for r in wide)
        out += ["", f"speedup on plans of width >= 4 ({sum(r['plans'] for r in wide)} plans): {seq / dag:.2f}x"]
    if why:
        out += ["", "plans with a failed call (first error; the same in both modes):"]
        out += [f"  {n:>3}  {w}" for w, n in sorted(why.items(), key=lambda kv: -kv[1])]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--median-ms", type=float, default=50.0)
    p.add_argument("--sigma", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N items of each data set")
    p.add_argument("--out", type=Path, default=RESULTS / "tool_dag.txt")
    args = p.parse_args()
    if not DATA.is_dir():
        print(f"skipped: function-calling data not found at {DATA} (see ../shared/data/SOURCES.md)")
        return 0
    lines = asyncio.run(main_async(args))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.limit is None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
