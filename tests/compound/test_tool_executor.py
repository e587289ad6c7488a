"""DAG executor: concurrency where inputs allow it, plan order at max_concurrency=1,
substitution, timeouts, retries, failures fed forward, and the trace."""

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from fleetlm.compound.tools.executor import ExecutorConfig, execute
from fleetlm.compound.tools.plan import parse_plan, plan_from_nestful
from fleetlm.compound.tools.registry import Tool
from fleetlm.config import shared_data


def run(coro):
    return asyncio.run(coro)


class Clock:
    """Tools that sleep a given time and log when they start, to check overlap."""

    def __init__(self):
        self.started = []
        self.active = 0
        self.peak = 0

    def tool(self, name, delay, fn=lambda **a: a):
        async def call(**args):
            self.started.append((name, args))
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                await asyncio.sleep(delay)
                return fn(**args)
            finally:
                self.active -= 1
        return call


WIDE = """1. search(q="a")
2. search(q="b")
3. search(q="c")
4. search(q="d")
5. combine(parts=[$1.q, $2.q, $3.q, $4.q])
6. join()"""


def test_independent_calls_run_concurrently_and_results_flow():
    clock = Clock()
    tools = {"search": clock.tool("search", 0.2), "combine": clock.tool("combine", 0.05, lambda parts: "".join(parts))}
    ex = run(execute(parse_plan(WIDE), tools))
    assert ex.ok and ex.results["5"] == "abcd"
    assert clock.peak == 4
    assert ex.wall_s < 0.6  # ~0.25 s, not the 0.85 s of one at a time
    by_id = {r.id: r for r in ex.trace}
    assert [r.id for r in ex.trace] == ["1", "2", "3", "4", "5"]
    assert by_id["5"].start_s >= max(by_id[i].end_s for i in "1234") - 1e-6
    assert by_id["5"].args == {"parts": ["a", "b", "c", "d"]}
    j = by_id["1"].to_json()
    assert j["attempts"] == 1 and j["error"] is None and j["duration_s"] >= 0.19 and j["result"] == {"q": "a"}


def test_one_at_a_time_runs_in_plan_order_with_equal_results():
    clock = Clock()
    tools = {"search": clock.tool("search", 0.05), "combine": clock.tool("combine", 0.01, lambda parts: "".join(parts))}
    seq = run(execute(parse_plan(WIDE), tools, ExecutorConfig(max_concurrency=1)))
    assert clock.peak == 1 and [a["q"] for n, a in clock.started if n == "search"] == ["a", "b", "c", "d"]
    assert seq.wall_s >= 0.2
    par = run(execute(parse_plan(WIDE), tools))
    assert par.results == seq.results
    clock.peak = 0
    run(execute(parse_plan(WIDE), tools, ExecutorConfig(max_concurrency=2)))
    assert clock.peak == 2


def test_timeouts_retry_then_fail_and_dependents_are_skipped():
    calls = {"n": 0}

    async def flaky(q):
        calls["n"] += 1
        if calls["n"] < 3:
            await asyncio.sleep(1)  # times out
        return q.upper()

    async def never(q):
        await asyncio.sleep(5)

    tools = {"flaky": flaky, "never": never, "echo": lambda **a: _done(a)}
    plan = parse_plan('1. flaky(q="x")\n2. never(q="y")\n3. echo(v=$2)\n4. echo(v=$1)')
    ex = run(execute(plan, tools, ExecutorConfig(call_timeout_s=0.05, retries=2)))
    rec = {r.id: r for r in ex.trace}
    assert rec["1"].attempts == 3 and rec["1"].error is None and ex.results["1"] == "X"
    assert rec["2"].attempts == 3 and rec["2"].error == "timed out after 0.05 s"
    assert rec["3"].error.startswith("skipped: input $2 failed") and rec["3"].start_s is None
    assert ex.results["4"] == {"v": "X"} and set(ex.errors) == {"2", "3"} and not ex.ok


async def _done(value):
    return value


def test_argument_errors_and_bad_references_are_not_retried():
    attempts = {"n": 0}

    def strict(n: int) -> int:
        """Count."""
        attempts["n"] += 1
        return n

    tools = {"strict": Tool.from_function(strict), "echo": lambda **a: _done(a)}
    plan = parse_plan('1. strict(n="many")\n2. echo(v=1)\n3. echo(v=$2.missing)\n4. nosuch(x=1)')
    ex = run(execute(plan, tools, ExecutorConfig(retries=3)))
    rec = {r.id: r for r in ex.trace}
    assert rec["1"].attempts == 1 and "ToolArgumentError" in rec["1"].error and attempts["n"] == 0
    assert rec["3"].attempts == 0 and "no 'missing'" in rec["3"].error
    assert rec["3"].to_json()["args"] == {"v": "$2.missing"}
    assert "unknown tool 'nosuch'" in rec["4"].error
    assert ex.results == {"2": {"v": 1}}


def test_exceptions_are_reported_with_their_type():
    async def boom(x):
        raise RuntimeError("disk on fire")

    ex = run(execute(parse_plan("1. boom(x=1)"), {"boom": boom}, ExecutorConfig(retries=1)))
    assert ex.trace[0].error == "RuntimeError: disk on fire" and ex.trace[0].attempts == 2


def test_cancellation_stops_running_tools():
    cancelled = []

    async def slow(x):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise

    async def main():
        task = asyncio.create_task(execute(parse_plan("1. slow(x=1)\n2. slow(x=2)"), {"slow": slow}))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)

    run(main())
    assert sorted(cancelled) == [1, 2]


@pytest.mark.parametrize("kw", [{"call_timeout_s": 0}, {"retries": -1}, {"max_concurrency": 0}])
def test_config_is_validated(kw):
    with pytest.raises(ValueError):
        ExecutorConfig(**kw)


DATA = shared_data("function_calling")


@pytest.mark.slow  # reads the full NESTFUL and ParallelQA sets (small: about 2 s)
@pytest.mark.skipif(not DATA.is_dir(), reason=f"function-calling data not found at {DATA} "
                                              "(see ../shared/data/SOURCES.md)")
def test_public_plans_give_the_same_results_both_ways():
    """benchmarks/tool_dag.py's plans and stand-in tools at ~0.2 ms latency: the DAG run and
    the one-at-a-time run agree (run_one asserts it) on every NESTFUL sequence and ParallelQA plan."""
    spec = importlib.util.spec_from_file_location("tool_dag", Path(__file__).resolve().parents[2] / "benchmarks"
                                                  / "tool_dag.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    latency = bench.Latency(0, 0.0002, 0.4)
    specs = json.loads((DATA / "nestful" / "executable-spec.json").read_text())
    work = [(plan_from_nestful(item["output"]), bench.nestful_tools(specs, latency, f"n{i}"))
            for i, item in enumerate(json.loads((DATA / "nestful" / "executable-data.json").read_text()))]
    work += [(bench.parallelqa_plan(q), bench.parallelqa_tools(latency, q["id"]))
             for q in json.loads((DATA / "llmcompiler" / "parallelqa_dataset.json").read_text())]
    failed = sum(bool(run(bench.run_one(plan, tools))[4]) for plan, tools in work)
    assert len(work) == 198 and failed < 30  # failures: NESTFUL fields their specs do not list
