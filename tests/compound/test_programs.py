"""Compound programs: `Ctx` and `ProgramTarget` on scripted Targets (as DSPy's DummyLM), the
safe arithmetic evaluator, the built-ins' logic, and the loaders. Real-model and HTTP tests
are in tests/api/test_programs_api.py."""

from __future__ import annotations

import asyncio
import json
import textwrap

import pytest

from fleetlm.compound.programs import Streamed, majority, program
from fleetlm.compound.programs.arith import ExpressionError, evaluate, format_number
from fleetlm.compound.programs.builtin import bon, cascade, moa, normalise, pot, recompute, sc, step_expressions
from fleetlm.compound.programs.ctx import BudgetExceededError, ProgramError
from fleetlm.compound.programs.loader import build_programs, load_dir
from fleetlm.compound.programs.target import ProgramTarget
from fleetlm.config import Budget, ProgramConfig
from fleetlm.openai.chunks import ChatChunk, ChatDelta, CompletionChunk, CompletionDelta, ModelCard, Usage, collect_chat
from fleetlm.openai.errors import APIError, BadRequestError, NotFoundError
from fleetlm.openai.protocol import ChatCompletionRequest


class Echo:
    """A scripted Target: answers with canned texts (cycling), n choices when asked; counts calls."""

    def __init__(self, model_id="m", replies=("a",), *, refuses_n=False, delay=0.0, usage=(10, 5)):
        self.model_id, self.replies, self.refuses_n, self.delay, self.usage = model_id, list(replies), refuses_n, \
            delay, usage
        self.requests = []
        self.cancelled = 0

    def card(self):
        return ModelCard(self.model_id)

    def engines(self):
        return frozenset()

    def _next(self):
        return self.replies[(len(self.requests) - 1) % len(self.replies)]

    async def chat(self, req):
        self.requests.append(req)
        text = self._next()  # chosen now: concurrent calls get different replies
        if req.n > 1 and self.refuses_n:
            raise BadRequestError("n is not supported", param="n")
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        texts = [text] if req.n == 1 else [self.replies[i % len(self.replies)] for i in range(req.n)]
        for i, t in enumerate(texts):
            lp = [{"token": "t", "logprob": -float(len(t))}] if req.logprobs else None  # shorter: likelier
            yield ChatChunk(served_by=self.model_id, choices=[ChatDelta(i, "assistant", t, logprobs=lp)])
        yield ChatChunk(served_by=self.model_id, choices=[ChatDelta(i, finish_reason="stop") for i in range(req.n)],
                        usage=Usage(self.usage[0], self.usage[1] * req.n, 0, 0.001))

    async def complete(self, req):
        self.requests.append(req)
        yield CompletionChunk(served_by=self.model_id, choices=[CompletionDelta(0, self._next(), None, "stop")],
                              usage=Usage(*self.usage))


def fleet(*targets):
    by_id = {t.model_id: t for t in targets}

    def resolve(model):
        if model not in by_id:
            raise NotFoundError(f"no {model}")
        return by_id[model]

    return resolve


def run_program(fn, resolve, messages="q", *, budget=None, stream=False, **params):
    target = ProgramTarget("p", fn, resolve=resolve, default_model="m", engines=frozenset(), params=params,
                           budget=budget)
    req = ChatCompletionRequest(model="compound/p", messages=[{"role": "user", "content": messages}], stream=stream)

    async def go():
        return [c async for c in target.chat(req)]

    return asyncio.run(go())


def result_of(chunks):
    async def gen():
        for c in chunks:
            yield c

    return asyncio.run(collect_chat(gen()))


# ---- Ctx -------------------------------------------------------------------------------
def test_usage_is_the_sum_of_the_calls_and_the_trace_names_them():
    m, big = Echo("m", ["x"], usage=(10, 5)), Echo("big", ["y"], usage=(100, 20))

    @program("two")
    async def two(ctx, messages):
        a = await ctx.chat("m", messages)
        b = await ctx.chat("big", [{"role": "user", "content": a.text}])
        ctx.step("done", seen=[a.text, b.text])
        return a.text + b.text

    r = result_of(run_program(two, fleet(m, big)))
    assert r.text == "xy" and r.served_by == "compound/p"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (110, 25)
    assert r.usage.cost_usd == pytest.approx(0.002)
    assert [(c.model, c.served_by, c.usage.total_tokens) for c in r.calls] == [("m", "m", 15), ("big", "big", 120)]
    trace = r.extra["fleetlm_trace"]
    assert [s["name"] for s in trace["steps"]] == ["done"] and trace["steps"][0]["seen"] == ["x", "y"]
    assert [c["model"] for c in trace["calls"]] == ["m", "big"] and trace["wall_s"] >= 0


def test_budgets_stop_a_runaway_program_with_a_4xx_naming_the_limit():
    @program("loop")
    async def loop(ctx, messages):
        while True:
            await ctx.chat("m", messages, temperature=1.0)

    for budget, limit in ((Budget(max_calls=3), "max_calls"), (Budget(max_tokens=40), "max_tokens"),
                          (Budget(max_usd=0.0025), "max_usd")):
        with pytest.raises(BudgetExceededError) as err:
            run_program(loop, fleet(Echo()), budget=budget)
        assert err.value.status == 400 and err.value.param == f"budget.{limit}" and limit in err.value.message

    @program("slow")
    async def slow(ctx, messages):
        return (await ctx.chat("m", messages)).text

    slow_m = Echo(delay=5)
    with pytest.raises(BudgetExceededError, match="max_seconds=0.2"):
        run_program(slow, fleet(slow_m), budget=Budget(max_seconds=0.2))
    assert slow_m.cancelled == 1  # the call in flight was cancelled with the program


def test_deterministic_calls_are_cached_and_rollouts_are_not_collapsed():
    m = Echo(replies=["a", "b", "c"])

    @program("c")
    async def cached(ctx, messages):
        same = [(await ctx.chat("m", messages, temperature=0)).text for _ in range(3)]
        rolled = [(await ctx.chat("m", messages, temperature=0, rollout=i)).text for i in range(2)]
        sampled = [(await ctx.chat("m", messages, temperature=0.9)).text for _ in range(2)]
        return ",".join(same + rolled + sampled)

    r = result_of(run_program(cached, fleet(m)))
    assert r.text == "a,a,a,b,c,a,b" and len(m.requests) == 5 and len(r.calls) == 5


def test_fork_is_one_request_or_n_calls_for_targets_that_refuse_n():
    @program("f")
    async def f(ctx, messages):
        return "|".join(await ctx.fork("m", messages, n=3, temperature=0.7))

    one = Echo(replies=["p", "q", "r"])
    assert result_of(run_program(f, fleet(one))).text == "p|q|r" and len(one.requests) == 1
    many = Echo(replies=["p", "q", "r"], refuses_n=True)
    r = result_of(run_program(f, fleet(many)))
    assert sorted(r.text.split("|")) == ["p", "q", "r"] and len(many.requests) == 4  # the refused one, then 3
    with pytest.raises(BudgetExceededError):  # each sample counts as a call
        run_program(f, fleet(Echo()), budget=Budget(max_calls=2))


def test_gather_runs_concurrently_and_a_failure_cancels_the_rest():
    slow, bad = Echo("slow", delay=0.3), Echo("bad", delay=0.0)

    async def explode(req):
        raise APIError(503, "down")
        yield

    bad.chat = explode

    @program("g")
    async def g(ctx, messages):
        out = await ctx.gather(*(ctx.chat("slow", messages, rollout=i) for i in range(4)))
        return str(len(out))

    @program("h")
    async def h(ctx, messages):
        await ctx.gather(ctx.chat("slow", messages), ctx.chat("bad", messages))

    import time

    t0 = time.monotonic()
    assert result_of(run_program(g, fleet(slow))).text == "4"
    assert time.monotonic() - t0 < 0.9  # four 0.3 s calls at once, not one after another
    with pytest.raises(APIError, match="bad failed \\(HTTP 503\\)") as err:
        run_program(h, fleet(slow, bad))
    assert err.value.status == 502 and slow.cancelled == 1


def test_select_and_the_programs_own_errors():
    m = Echo(replies=['"blue"'])

    @program("s")
    async def s(ctx, messages):
        return await ctx.select("m", messages, ["red", "blue"])

    assert result_of(run_program(s, fleet(m))).text == "blue"
    assert m.requests[0].response_format.json_schema.schema_ == {"enum": ["red", "blue"]}

    @program("u")
    async def unknown(ctx, messages):
        return (await ctx.chat("nope", messages)).text

    @program("r")
    async def raises(ctx, messages):
        return 1 / 0

    @program("w")
    async def wrong_type(ctx, messages):
        return 42

    for fn, match in ((unknown, "calls 'nope', which this server does not serve"),
                      (raises, "ZeroDivisionError"), (wrong_type, "returned int")):
        with pytest.raises(ProgramError, match=match) as err:
            run_program(fn, fleet(m))
        assert err.value.status == 500 and err.value.code == "program_error"


def test_streaming_sends_steps_and_a_streamed_answer_keeps_its_deltas():
    m = Echo(replies=["streamed answer"])

    @program("st")
    async def st(ctx, messages):
        ctx.step("plan", note=object())  # not JSON: recorded as its text
        return ctx.stream("m", messages, max_tokens=8)

    chunks = run_program(st, fleet(m), stream=True)
    assert chunks[0].extra["fleetlm_step"]["name"] == "plan" and not chunks[0].choices
    assert isinstance(chunks[0].extra["fleetlm_step"]["note"], str)
    assert all(c.served_by == "compound/p" for c in chunks)
    r = result_of(chunks)
    assert r.text == "streamed answer" and r.usage.total_tokens == 15 and len(r.calls) == 1
    assert m.requests[0].stream and m.requests[0].max_tokens == 8
    assert isinstance(Streamed("m", m.requests[0]), Streamed)


def test_majority_and_normalise():
    assert majority(["Paris.", "paris", "Rome"], key=normalise) == ("Paris.", {"paris": 2, "rome": 1})
    assert majority(["a", "b"]) == ("a", {"a": 1, "b": 1})  # a tie: the first seen
    assert majority([]) == ("", {})


# ---- the arithmetic evaluator ----------------------------------------------------------
@pytest.mark.parametrize("text, value", [("7 * 3", 21), ("45 - 9 * 3", 18), ("(2 + 3) ** 2", 25),
                                          ("7 / 2", 3.5), ("-4 // 3", -2), ("sqrt(16) + abs(-1)", 5.0),
                                          ("3 × 4", 12), ("2^10", 1024), ("10 % 4.", 2)])
def test_arithmetic(text, value):
    assert evaluate(text) == value


@pytest.mark.parametrize("text", ["__import__('os').system('x')", "open('f')", "x + 1", "[1] * 9", "lambda: 1",
                                  "2 ** 1000", "(10 ** 10) ** 10", "9" * 600, "1 / 0", "(-1) ** 0.5",
                                  "().__class__", "f'{1}'", ""])
def test_hostile_expressions_are_refused_fast(text):
    with pytest.raises(ExpressionError):
        evaluate(text)


def test_format_number():
    assert [format_number(v) for v in (12.0, 2 / 3, 7, -0.5)] == ["12", "0.666667", "7", "-0.5"]


# ---- built-ins -------------------------------------------------------------------------
def test_sc_takes_the_normalised_majority():
    m = Echo(replies=["Lyon", "lyon.", "Paris", " LYON ", "Nice"])
    r = result_of(run_program(sc, fleet(m), n=5))
    assert r.text == "Lyon" and r.extra["fleetlm_trace"]["steps"][0]["votes"]["lyon"] == 3
    assert m.requests[0].n == 5 and m.requests[0].temperature == 0.7


def test_pot_computes_what_the_model_writes():
    m = Echo(replies=[" 12 * 4 + 3"])
    r = result_of(run_program(pot, fleet(m), "A box holds 12 eggs. How many eggs are in 4 boxes and 3 more?"))
    assert r.text == "51" and "Question: A box holds 12 eggs" in m.requests[0].prompt
    assert r.extra["fleetlm_trace"]["steps"][0] == {"name": "evaluate", "t_s": pytest.approx(0, abs=1),
                                                     "expression": "12 * 4 + 3", "value": "51"}
    bad = Echo(replies=["import os"])
    assert "could not compute" in result_of(run_program(pot, fleet(bad))).text


def test_pot_recomputes_an_experts_steps():
    slip = Echo(replies=["8 x 9 = 72. 72 + 7 = 85. 85 - 38 = 53. The answer is 53."])  # 72 + 7 is 79
    r = result_of(run_program(pot, fleet(slip), "8 packs of 9, 7 loose, 38 given away?", mode="steps"))
    assert r.text == "41" and "Problem: 8 packs of 9" in slip.requests[0].messages[0].content
    assert recompute(step_expressions("12 x 7 = 84. 84 - 4 = 78. The answer is 78.")) == 80
    assert recompute(["max(2, 3) * 2"]) == 6  # a bare expression
    with pytest.raises(ExpressionError):
        recompute(step_expressions("I think the answer is 12."))


def test_cascade_escalates_only_when_the_check_fails():
    small, big = Echo("small", ["not a number"]), Echo("big", ["42"])
    r = result_of(run_program(cascade, fleet(small, big), models=["small", "big"], check="number"))
    assert r.text == "42" and [s["escalated"] for s in r.extra["fleetlm_trace"]["steps"]] == [False, True]
    ok = Echo("small", ["7"])
    r = result_of(run_program(cascade, fleet(ok, big), models=["small", "big"], check="number"))
    assert r.text == "7" and not big.requests[1:]  # the big model was asked only the first time


def test_bon_picks_what_its_verifier_scores_best():
    m = Echo(replies=["a long answer", "mid one", "x"])
    r = result_of(run_program(bon, fleet(m), n=3))  # logprob: one request with n and logprobs
    assert r.text == "x" and m.requests[0].logprobs and m.requests[0].n == 3
    assert r.extra["fleetlm_trace"]["steps"][0]["chosen"] == 2
    judged = Echo(replies=["first", "second"])
    judge = Echo("judge", ['"2"'])
    r = result_of(run_program(bon, fleet(judged, judge), n=2, verifier="judge", judge="judge"))
    assert r.text == "second" and "Answer 2:\nsecond" in judge.requests[0].messages[0].content
    nums = Echo(replies=["none", "12", "13"])
    assert result_of(run_program(bon, fleet(nums), n=3, verifier="number")).text == "12"
    assert result_of(run_program(bon, fleet(Echo(replies=["aa", "b"])), n=2,
                                 verifier="tests.compound.test_programs:longest")).text == "aa"
    with pytest.raises(ProgramError, match="bon verifier must be"):
        run_program(bon, fleet(m), n=2, verifier="nope")


def longest(text: str) -> float:
    return len(text)


def test_moa_aggregates_the_proposers_and_streams_the_aggregate():
    props = Echo("p", ["Paris", "Lyon", "Paris"])
    agg = Echo("agg", ["Paris, the capital."])
    chunks = run_program(moa, fleet(props, agg), stream=True, proposers=["p", "p", "p"], aggregator="agg")
    r = result_of(chunks)
    assert r.text == "Paris, the capital." and [c.model for c in r.calls] == ["p", "p", "p", "agg"]
    system = agg.requests[0].messages[0]
    assert system.role == "system" and "Answer 3:\nParis" in system.content and agg.requests[0].stream
    assert r.usage.total_tokens == sum(c.usage.total_tokens for c in r.calls)


# ---- loaders ---------------------------------------------------------------------------
def test_a_programs_folder_loads_what_it_can_and_names_the_broken_file(tmp_path):
    (tmp_path / "good.py").write_text(textwrap.dedent('''
        from fleetlm.compound.programs import program

        @program("hello")
        async def hello(ctx, messages, *, who="world"):
            return f"hello {who}"
    '''))
    (tmp_path / "broken.py").write_text("import no_such_module_anywhere\n")
    (tmp_path / "twice.py").write_text(textwrap.dedent('''
        from fleetlm.compound.programs import program

        @program("hello")
        async def again(ctx, messages):
            return "again"
    '''))
    found, errors = load_dir(tmp_path)
    assert list(found) == ["hello"]
    assert any("broken.py" in e and "ModuleNotFoundError" in e for e in errors)
    assert any("twice.py" in e and "already defined" in e for e in errors)
    targets = build_programs([ProgramConfig(name="hi-you", program="hello", params={"who": "you"})],
                             programs_dir=str(tmp_path), resolve=fleet(), default_model="m", engines=frozenset())
    by_id = {t.model_id: t for t in targets}
    assert {"compound/hello", "compound/hi-you", "compound/sc", "compound/pot", "compound/cascade"} <= set(by_id)
    assert result_of(run_program(by_id["compound/hi-you"].fn, fleet(), who="you")).text == "hello you"
    with pytest.raises(ValueError, match="no program 'nope'"):
        build_programs([ProgramConfig(name="x", program="nope")], programs_dir=None, resolve=fleet(),
                       default_model="m", engines=frozenset())


def test_installed_packages_register_programs_through_entry_points(tmp_path, monkeypatch):
    pkg = tmp_path / "acme_programs.py"
    pkg.write_text("from fleetlm.compound.programs import program\n\n@program('acme')\n"
                   "async def acme(ctx, messages):\n    return 'from a package'\n")
    dist = tmp_path / "acme_programs-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-programs\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fleetlm.programs]\nacme = acme_programs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    targets = build_programs([], programs_dir=None, resolve=fleet(), default_model="m", engines=frozenset())
    acme = next(t for t in targets if t.model_id == "compound/acme")
    assert result_of(run_program(acme.fn, fleet())).text == "from a package"


def test_program_decorator_refuses_plain_functions():
    with pytest.raises(TypeError, match="async"):
        program("x")(lambda ctx, messages: "no")


def test_a_router_passes_over_a_program_that_cannot_take_the_request():
    from fleetlm.backends.router import RouterTarget, fixed_order
    from fleetlm.openai.errors import UnsupportedError

    prog = ProgramTarget("p", pot, resolve=fleet(), default_model="m", engines=frozenset())  # no tools
    m = Echo(replies=["called"])
    router = RouterTarget("router/r", fixed_order(["prog", "m"]), {"prog": prog, "m": m})
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    req = ChatCompletionRequest(model="router/r", messages=[{"role": "user", "content": "q"}], tools=tools)
    r = asyncio.run(collect_chat(router.chat(req)))
    assert r.served_by == "m" and not router.cooling  # passed over, not cooled down
    only = RouterTarget("router/o", fixed_order(["prog"]), {"prog": prog})
    with pytest.raises(UnsupportedError, match="does not support `tools`"):
        asyncio.run(collect_chat(only.chat(req)))


class ToolEcho(Echo):
    """A scripted Target that answers requests with tools by calls: one list of (name, args) per sample."""

    def __init__(self, samples, model_id="t"):
        super().__init__(model_id)
        self.samples = samples

    async def chat(self, req):
        from fleetlm.openai.chunks import ToolCallDelta

        self.requests.append(req)
        for i in range(req.n):
            calls = [ToolCallDelta(k, f"call_{i}_{k}", name, json.dumps(args))
                     for k, (name, args) in enumerate(self.samples[i % len(self.samples)])]
            lp = [{"token": "t", "logprob": -float(i)}] if req.logprobs else None
            yield ChatChunk(served_by=self.model_id, choices=[ChatDelta(i, "assistant", None, calls, lp)])
        yield ChatChunk(served_by=self.model_id, choices=[ChatDelta(i, finish_reason="tool_calls") for i in range(req.n)],
                        usage=Usage(10, 5 * req.n, 0))


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def run_with_tools(fn, resolve, **params):
    target = ProgramTarget("p", fn, resolve=resolve, default_model="t", engines=frozenset(), params=params)
    req = ChatCompletionRequest(model="compound/p", messages=[{"role": "user", "content": "q"}], tools=TOOLS,
                                tool_choice="required")

    async def go():
        return await collect_chat(target.chat(req))

    return asyncio.run(go())


def test_sc_votes_over_normalised_tool_calls():
    t = ToolEcho([[("f", {"a": 1, "b": 2})], [("f", {"b": 2, "a": 1})], [("f", {"a": 9})]])
    r = run_with_tools(sc, fleet(t), n=3)
    msg = r.choices[0].message
    assert [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == [("f", {"a": 1, "b": 2})]
    assert r.choices[0].finish_reason == "tool_calls" and msg.content is None
    assert t.requests[0].tools[0]["function"]["name"] == "f" and t.requests[0].tool_choice == "required"
    assert sorted(r.extra["fleetlm_trace"]["steps"][0]["votes"].values()) == [1, 2]


def test_bon_with_tools_keeps_the_likeliest_sample_and_pot_refuses_tools():
    from fleetlm.openai.errors import UnsupportedError

    t = ToolEcho([[("f", {"a": 1})], [("f", {"a": 2})]])
    r = run_with_tools(bon, fleet(t), n=2)
    assert json.loads(r.choices[0].message.tool_calls[0].arguments) == {"a": 1}  # logprob 0 beats -1
    with pytest.raises(UnsupportedError, match="does not support `tools`"):
        run_with_tools(pot, fleet(t))
    with pytest.raises(UnsupportedError, match="verifier must be logprob"):
        run_with_tools(bon, fleet(t), n=2, verifier="judge")


async def population(city: str) -> float:
    """Population of a city, in millions."""
    await asyncio.sleep(0.1)
    return {"Oslo": 0.7, "Lima": 10.0}[city]


def add(a: float, b: float) -> float:
    """Sum of two numbers."""
    return round(a + b, 3)


def test_ctx_tool_and_plan_run_the_programs_own_tools():
    from fleetlm.compound.tools.plan import PlanError

    @program("t")
    async def uses_tools(ctx, messages):
        one = await ctx.tool("population", city="Oslo")
        run = await ctx.plan('1. population(city="Oslo")\n2. population(city="Lima")\n3. add(a=$1, b=$2)\n4. join()')
        try:
            await ctx.plan("1. fly(to=\"moon\")")
        except PlanError as exc:
            ctx.step("refused", why=str(exc))
        return f"{one} {run.results['3']}"

    targets = build_programs([ProgramConfig(name="with-tools", program="cascade", tools=[
        "tests.compound.test_programs:population", "tests.compound.test_programs:add"])], programs_dir=None,
        resolve=fleet(), default_model="m", engines=frozenset())
    registry = next(t for t in targets if t.model_id == "compound/with-tools").registry
    target = ProgramTarget("t", uses_tools, resolve=fleet(), default_model="m", engines=frozenset(),
                           registry=registry, tool_timeout_s=5)
    req = ChatCompletionRequest(model="compound/t", messages=[{"role": "user", "content": "q"}])
    r = asyncio.run(collect_chat(target.chat(req)))
    assert r.text == "0.7 10.7"
    steps = r.extra["fleetlm_trace"]["steps"]
    assert [s["name"] for s in steps] == ["tool", "plan", "refused"] and steps[0]["error"] is None
    calls = steps[1]["calls"]
    assert max(c["start_s"] for c in calls[:2]) < min(c["end_s"] for c in calls[:2])  # the two lookups overlapped
    assert "fly" in steps[2]["why"]

    @program("u")
    async def unknown_tool(ctx, messages):
        return await ctx.tool("nope")

    with pytest.raises(ProgramError, match="calls tool 'nope', which it was not given"):
        run_program(unknown_tool, fleet())
