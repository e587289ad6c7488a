"""Compound programs through a real server with the real `openai` client: the README's
example under `fleet serve --programs-dir`, usage and the ledger, budgets, failures,
cancellation, and (slow) each built-in on the real gemma-3-270m."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import httpx
import openai
import pytest

from fleetlm.compound.programs.arith import evaluate, format_number
from fleetlm.config import Budget, ProgramConfig
from tests.api.conftest import fleet_serve, free_port, start_gemma_server, start_server, stop_process, wait_healthy
from tests.api.test_fleet_paths import hang_up_mid_request, metric, slow_steps, wait_idle

README = Path(__file__).resolve().parents[2] / "README.md"
ASK = [{"role": "user", "content": "Name a colour."}]

PROGRAMS = textwrap.dedent('''
    import asyncio

    from fleetlm.compound.programs import program


    @program("two-calls")
    async def two_calls(ctx, messages):
        a = await ctx.chat(ctx.default_model, messages, max_tokens=4, temperature=0)
        b = await ctx.complete(ctx.default_model, "Once upon", max_tokens=3, temperature=0)
        return a.text + b.text


    @program("boom")
    async def boom(ctx, messages):
        raise RuntimeError("the program broke")


    @program("lost")
    async def lost(ctx, messages):
        return (await ctx.chat("no-such-model", messages)).text


    @program("sleepy")
    async def sleepy(ctx, messages):
        await asyncio.sleep(30)
        return "late"


    @program("pick")
    async def pick(ctx, messages):
        return await ctx.select(ctx.default_model, messages, ["red", "blue", "green"])


    @program("wide")
    async def wide(ctx, messages):
        out = await ctx.gather(*(ctx.chat(ctx.default_model, messages, max_tokens=200, rollout=i,
                                          ignore_eos=True) for i in range(3)))
        return " ".join(r.text for r in out)
''')


def readme_program() -> str:
    """The README's example program, exactly as printed there."""
    blocks = re.findall(r"```python\n(# programs/.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README shows one example program"
    assert len(blocks[0].strip().splitlines()) <= 15
    return blocks[0]


def test_the_readme_program_runs_under_fleet_serve(tiny_gemma, tmp_path):
    folder = tmp_path / "programs"
    folder.mkdir()
    (folder / "vote.py").write_text(readme_program())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = fleet_serve(tiny_gemma, port, "--programs-dir", str(folder))
    try:
        wait_healthy(url, timeout=120)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert "compound/vote" in {m.id for m in client.models.list().data}
        r = client.chat.completions.create(model="compound/vote", messages=ASK)
        assert r.model == "compound/vote" and isinstance(r.choices[0].message.content, str)
        trace = r.model_extra["fleetlm_trace"]
        votes = trace["steps"][0]["votes"]
        assert trace["steps"][0]["name"] == "vote" and sum(votes.values()) == 5
        assert r.usage.completion_tokens == trace["calls"][0]["completion_tokens"] > 0
        chunks = list(client.chat.completions.create(model="compound/vote", messages=ASK, stream=True,
                                                     stream_options={"include_usage": True}))
        steps = [c.model_extra["fleetlm_step"] for c in chunks if c.model_extra.get("fleetlm_step")]
        assert [s["name"] for s in steps] == ["vote"]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert isinstance(text, str) and chunks[-1].usage.completion_tokens > 0
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def programs_server(tiny_gemma_2k, tmp_path_factory):
    folder = tmp_path_factory.mktemp("programs")
    (folder / "mine.py").write_text(PROGRAMS)
    (folder / "broken.py").write_text("raise SystemError('a broken program file')\n")
    configs = [ProgramConfig(name="capped", program="two-calls", budget=Budget(max_calls=1)),
               ProgramConfig(name="quick", program="sleepy", budget=Budget(max_seconds=0.3)),
               ProgramConfig(name="sc-short", program="sc", params={"max_tokens": 96})]
    running, srv, thread = start_server(tiny_gemma_2k, programs_dir=str(folder), programs=configs,
                                        engine_kw={"max_model_len": 1024})
    yield running
    srv.should_exit = True
    thread.join(10)


def test_select_scores_each_choice_by_its_log_probability_on_the_local_model(programs_server):
    client = programs_server.client()
    r = client.chat.completions.create(model="compound/pick", messages=ASK)
    step = r.model_extra["fleetlm_trace"]["steps"][0]
    assert step["name"] == "select" and step["by"] == "logprob" and set(step["scores"]) == {"red", "blue", "green"}
    assert r.choices[0].message.content == max(step["scores"], key=step["scores"].get)
    for choice, score in step["scores"].items():  # each score is the forced answer's logprob sum, as the API gives it
        direct = client.chat.completions.create(
            model="tiny", messages=ASK, temperature=0, logprobs=True, max_tokens=16,
            response_format={"type": "json_schema", "json_schema": {"name": "choice", "schema": {"enum": [choice]}}})
        assert direct.choices[0].message.content == f'"{choice}"'
        assert sum(t.logprob for t in direct.choices[0].logprobs.content) == pytest.approx(score, abs=1e-3)


def test_usage_is_the_sum_of_the_calls_and_the_ledger_counts_each_once(programs_server):
    client = programs_server.client()
    before = httpx.get(f"{programs_server.base_url}/metrics").text
    r = client.chat.completions.create(model="compound/two-calls", messages=ASK)
    calls = r.model_extra["fleetlm_trace"]["calls"]
    assert [c["model"] for c in calls] == ["tiny", "tiny"]
    assert r.usage.prompt_tokens == sum(c["prompt_tokens"] for c in calls)
    assert r.usage.completion_tokens == sum(c["completion_tokens"] for c in calls) == 4 + 3
    after = httpx.get(f"{programs_server.base_url}/metrics").text
    delta = lambda name, **kw: metric(after, name, **kw) - metric(before, name, **kw)  # noqa: E731
    assert delta("fleetlm_program_calls_total", program="compound/two-calls", model="tiny") == 2
    assert delta("fleetlm_program_call_tokens_total", program="compound/two-calls", model="tiny",
                 kind="completion") == 7
    assert delta("fleetlm_model_requests_total", model="compound/two-calls", served_by="compound/two-calls",
                 status=200) == 1
    assert delta("fleetlm_model_tokens_total", model="tiny", kind="completion") == 0  # not counted twice


def test_sc_with_tools_answers_with_the_majority_call(programs_server):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string", "maxLength": 4}}, "required": ["q"]}}}]
    r = programs_server.client().chat.completions.create(
        model="compound/sc-short", messages=ASK, tools=tools, tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "lookup"
    votes = r.model_extra["fleetlm_trace"]["steps"][0]["votes"]
    assert sum(votes.values()) == 5 and max(votes.values()) >= 1
    with pytest.raises(openai.BadRequestError, match="does not support `tools`"):
        programs_server.client().chat.completions.create(model="compound/capped", messages=ASK, tools=tools)


def test_a_budget_stops_the_program_with_a_4xx_naming_it(programs_server):
    for model, param in (("compound/capped", "budget.max_calls"), ("compound/quick", "budget.max_seconds")):
        resp = httpx.post(f"{programs_server.base_url}/v1/chat/completions", timeout=30,
                          json={"model": model, "messages": ASK})
        err = resp.json()["error"]
        assert resp.status_code == 400 and err["code"] == "budget_exceeded" and err["param"] == param, resp.text


def test_failing_programs_give_openai_errors_and_the_server_keeps_serving(programs_server):
    client = programs_server.client()
    for model, match in (("compound/boom", "RuntimeError: the program broke"),
                         ("compound/lost", "calls 'no-such-model', which this server does not serve")):
        with pytest.raises(openai.InternalServerError, match=re.escape(match)) as err:
            client.chat.completions.create(model=model, messages=ASK)
        assert err.value.body["code"] == "program_error"
        stream = httpx.post(f"{programs_server.base_url}/v1/chat/completions", timeout=30,
                            json={"model": model, "messages": ASK, "stream": True})
        assert stream.status_code == 500 and stream.json()["error"]["code"] == "program_error"
    ids = {m.id for m in client.models.list().data}
    assert "compound/two-calls" in ids and "compound/sc" in ids  # the broken file did not stop the others
    assert client.chat.completions.create(model="compound/two-calls", messages=ASK).choices[0].message.content


def test_cancelling_the_client_cancels_every_sub_call(tiny_gemma, tmp_path):
    (tmp_path / "mine.py").write_text(PROGRAMS)
    running, srv, thread = start_server(tiny_gemma, programs_dir=str(tmp_path))
    restore = slow_steps(running.llm, 0.03)  # 200 tokens: 6 s per call
    try:
        hang_up_mid_request(running.base_url, {"model": "compound/wide", "messages": ASK}, running.llm, rows=3)
        assert wait_idle(running.llm, timeout=5) < 5  # all three calls aborted, far before their 6 s
        assert not running.llm.engine.requests
    finally:
        restore()
        srv.should_exit = True
        thread.join(10)


# ---- the built-ins on the real model ---------------------------------------------------
@pytest.fixture(scope="module")
def gemma_programs():
    running, server, thread = start_gemma_server(max_model_len=2048)
    yield running
    server.should_exit = True
    thread.join(30)


@pytest.mark.slow
def test_pot_computes_a_word_problem_on_gemma(gemma_programs):
    r = gemma_programs.client().chat.completions.create(
        model="compound/pot", messages=[{"role": "user", "content": "A crate holds 24 bottles. How many bottles "
                                                                    "are in 5 crates?"}])
    step = r.model_extra["fleetlm_trace"]["steps"][0]
    assert step["name"] == "evaluate" and "error" not in step, step  # the model wrote arithmetic
    # the answer is what the evaluator computed from it (accuracy: benchmarks/programs.py)
    assert r.choices[0].message.content == format_number(evaluate(step["expression"])) == step["value"]


@pytest.mark.slow
def test_sc_votes_over_gemma_samples(gemma_programs):
    r = gemma_programs.client().chat.completions.create(
        model="compound/sc", messages=[{"role": "user", "content": "The capital of France is"}])
    steps = r.model_extra["fleetlm_trace"]["steps"]
    assert steps[0]["name"] == "vote" and steps[0]["n"] == 5 and sum(steps[0]["votes"].values()) == 5
    assert r.usage.completion_tokens == r.model_extra["fleetlm_trace"]["calls"][0]["completion_tokens"] > 0


@pytest.mark.slow
def test_cascade_on_gemma(gemma_programs):
    r = gemma_programs.client().chat.completions.create(
        model="compound/cascade", messages=[{"role": "user", "content": "Say something."}])
    steps = r.model_extra["fleetlm_trace"]["steps"]
    assert [s["model"] for s in steps] == ["gemma-3-270m"] and steps[0]["escalated"] is False


@pytest.mark.slow
def test_bon_scores_gemma_samples_by_logprob(gemma_programs):
    r = gemma_programs.client().chat.completions.create(
        model="compound/bon", messages=[{"role": "user", "content": "The capital of Italy is"}])
    step = r.model_extra["fleetlm_trace"]["steps"][0]
    assert step["verifier"] == "logprob" and len(step["scores"]) == 4 and all(s <= 0 for s in step["scores"])
    assert step["scores"][step["chosen"]] == max(step["scores"])


@pytest.mark.slow
def test_moa_streams_gemmas_aggregate(gemma_programs):
    chunks = list(gemma_programs.client().chat.completions.create(
        model="compound/moa", messages=[{"role": "user", "content": "Name a fruit."}], stream=True,
        stream_options={"include_usage": True}))
    steps = [c.model_extra["fleetlm_step"] for c in chunks if c.model_extra.get("fleetlm_step")]
    assert steps[0]["name"] == "propose" and len(steps[0]["proposers"]) == 3
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1  # the aggregator's answer arrives token by token
    assert chunks[-1].usage.completion_tokens > 0
