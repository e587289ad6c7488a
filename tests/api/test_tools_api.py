"""Tool calling through the real `openai` client against a real server (tiny random Gemma, fp32):
streamed == non-streamed calls, tool_choice behaviour, arguments that validate, multi-turn
round trips, errors. The slow test runs the embedded gemma-3-270m over BFCL questions."""

from __future__ import annotations

import json
import threading

import httpx
import jsonschema
import pytest

from tests.api.conftest import RunningServer, free_port, start_gemma_server, wait_healthy


def fn(name, properties=None, required=(), description=""):
    params = {"type": "object", "properties": properties or {}, "required": list(required)}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": params}}


WEATHER = fn("get_weather", {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}}, ["city"],
             "Current weather")
ADD = fn("math.add", {"a": {"type": "integer", "minimum": -99, "maximum": 99}, "b": {"type": "number"}}, ["a", "b"])
FLAGS = fn("set_flags", {"on": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
                         "mode": {"type": "object", "properties": {"level": {"type": "integer", "minimum": 0,
                                                                              "maximum": 9}},
                                  "required": ["level"], "additionalProperties": False}}, ["mode"])
NOOP = {"type": "function", "function": {"name": "noop"}}
TOOL_LISTS = [[WEATHER], [WEATHER, ADD], [ADD, FLAGS, NOOP], [NOOP, WEATHER, FLAGS, ADD]]
SCHEMAS = {t["function"]["name"]: t["function"].get("parameters", {"type": "object"})
           for t in [WEATHER, ADD, FLAGS, NOOP]}
USER = [{"role": "user", "content": "What is the weather in Paris, and 2 + 3?"}]


@pytest.fixture(scope="module")
def tools_server(tiny_gemma_2k):
    """The tiny Gemma with a 2048-token context: a tool list in a byte-level prompt is long."""
    import uvicorn

    from fleetlm.api.server import app_for_engine
    from fleetlm.config import EngineConfig, ServerConfig
    from fleetlm.engine.async_engine import AsyncLLM

    llm = AsyncLLM(EngineConfig(model=str(tiny_gemma_2k), dtype="float32", max_model_len=2048))
    server_config = ServerConfig(port=free_port())
    app = app_for_engine(llm, model_id="tiny", config=server_config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=server_config.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server_config.port}"
    wait_healthy(base, timeout=30)
    yield RunningServer(base, llm, "tiny", None)
    server.should_exit = True
    thread.join(10)


def collect_stream(chunks):
    """Stream chunks -> per choice (content, [(id, name, arguments)], finish_reason), accumulated
    the way OpenAI documents it: tool-call fragments joined by index."""
    out: dict[int, dict] = {}
    for chunk in chunks:
        for ch in chunk.choices:
            entry = out.setdefault(ch.index, {"content": "", "calls": {}, "finish": None})
            entry["content"] += ch.delta.content or ""
            for tc in ch.delta.tool_calls or []:
                call = entry["calls"].setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    assert call["id"] is None, "a call's id and name come once, in its first delta"
                    call["id"], call["name"] = tc.id, tc.function.name
                    assert tc.function.arguments == ""
                else:
                    call["arguments"] += tc.function.arguments
            entry["finish"] = ch.finish_reason or entry["finish"]
    return {i: (e["content"], [(c["id"], c["name"], c["arguments"]) for _, c in sorted(e["calls"].items())],
                e["finish"]) for i, e in out.items()}


def unstreamed(choice):
    calls = [(tc.id, tc.function.name, tc.function.arguments) for tc in choice.message.tool_calls or []]
    return choice.message.content or "", calls, choice.finish_reason


CHOICES = ["auto", "required", {"type": "function", "function": {"name": "get_weather"}}]


@pytest.mark.parametrize("case", range(12))
def test_streamed_tool_calls_equal_unstreamed(tools_server, case):
    tools = TOOL_LISTS[case % len(TOOL_LISTS)]
    choice = CHOICES[case % 3]
    if isinstance(choice, dict) and WEATHER not in tools:
        choice = "required"
    kw = dict(model="tiny", messages=USER, tools=tools, tool_choice=choice, parallel_tool_calls=case % 4 != 3,
              max_tokens=96, temperature=0.0 if case % 5 == 0 else 1.0, seed=case, n=2 if case % 6 == 1 else 1)
    client = tools_server.client()
    full = client.chat.completions.create(**kw)
    streamed = collect_stream(client.chat.completions.create(stream=True, **kw))
    assert sorted(streamed) == [c.index for c in full.choices]
    for c in full.choices:
        content, calls, finish = unstreamed(c)
        s_content, s_calls, s_finish = streamed[c.index]
        assert (s_content, [x[1:] for x in s_calls], s_finish) == (content, [x[1:] for x in calls], finish)
        assert all(x[0].startswith("call_") for x in calls + s_calls)
        assert len({x[0] for x in calls}) == len(calls)
        if choice != "auto":
            assert calls and c.message.content is None
        assert finish == ("tool_calls" if calls and finish != "length" else finish)
        if not kw["parallel_tool_calls"]:
            assert len(calls) <= 1


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("parallel", [False, True])
def test_required_calls_always_validate(tools_server, seed, parallel):
    tools = [WEATHER, ADD, FLAGS, NOOP]
    r = tools_server.client().chat.completions.create(
        model="tiny", messages=USER, tools=tools, tool_choice="required", parallel_tool_calls=parallel,
        max_tokens=400, temperature=1.0, seed=seed)
    choice = r.choices[0]
    if not parallel:
        assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and (len(calls) == 1 or parallel)
    complete = calls if choice.finish_reason == "tool_calls" else calls[:-1]  # the last may be cut off
    for call in complete:
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 200  # the tool list is in the prompt


def test_named_choice_calls_only_that_function(tools_server):
    for seed in range(3):
        r = tools_server.client().chat.completions.create(
            model="tiny", messages=USER, tools=[WEATHER, ADD, FLAGS],
            tool_choice={"type": "function", "function": {"name": "math.add"}}, max_tokens=300, seed=seed)
        assert {c.function.name for c in r.choices[0].message.tool_calls} == {"math.add"}


def test_none_gives_text_and_no_tool_prompt(tools_server):
    client = tools_server.client()
    r = client.chat.completions.create(model="tiny", messages=USER, tools=[WEATHER, ADD], tool_choice="none",
                                       max_tokens=20, seed=0)
    bare = client.chat.completions.create(model="tiny", messages=USER, max_tokens=20, seed=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    assert r.choices[0].message.content == bare.choices[0].message.content
    assert r.usage.prompt_tokens == bare.usage.prompt_tokens


def test_multi_turn_round_trip(tools_server):
    client = tools_server.client()
    messages = list(USER)
    first = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER, ADD],
                                           tool_choice="required", parallel_tool_calls=False, max_tokens=400,
                                           seed=1)
    reply = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    messages.append(reply.model_dump(exclude_none=True))  # the assistant turn as the client holds it
    for call in reply.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"ok": call.function.name})})
    second = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER, ADD],
                                            max_tokens=8, seed=1)
    # the history (calls + results) is in the prompt: longer than the first request's prompt + reply
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    messages += [second.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": "thanks"}]
    third = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER, ADD],
                                           tool_choice="none", max_tokens=4)
    assert third.choices[0].message.tool_calls is None


def test_max_tools_keeps_the_relevant_tool(tools_server):
    client = tools_server.client()
    kw = dict(model="tiny", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
              tools=[ADD, FLAGS, WEATHER], tool_choice="required", parallel_tool_calls=False, max_tokens=300, seed=0)
    full = client.chat.completions.create(**kw)
    budget = client.chat.completions.create(**kw, extra_body={"max_tools": 1})
    assert budget.usage.prompt_tokens < full.usage.prompt_tokens - 200  # two tools fewer in the prompt
    assert [c.function.name for c in budget.choices[0].message.tool_calls] == ["get_weather"]


def test_stream_usage_with_tools(tools_server):
    chunks = list(tools_server.client().chat.completions.create(
        model="tiny", messages=USER, tools=[ADD], tool_choice="required", max_tokens=200, seed=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert collect_stream(chunks[:-1])[0][2] in ("tool_calls", "length")


@pytest.mark.parametrize("body, param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [fn("f", {"x": {"type": "dict"}})]}, "tools[0].function.parameters"),
    ({"tools": [fn("f", {"x": {"type": "string", "pattern": "^(?=a)"}})]}, "tools"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": USER + [{"role": "tool", "tool_call_id": "call_x", "content": "1"}], "tools": [WEATHER]},
     "messages[1]"),
])
def test_tool_errors_are_openai_shaped_400s(tools_server, body, param):
    payload = {"model": "tiny", "messages": USER, "max_tokens": 4, **body}
    resp = httpx.post(f"{tools_server.base_url}/v1/chat/completions", json=payload, timeout=30)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


# ---- the real embedded model over BFCL ---------------------------------------------------
BFCL_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple")
BFCL_PER_CATEGORY = 8  # 40 questions, the first 8 of each category: 70-90 s with startup, 2 shared cores


@pytest.fixture(scope="module")
def gemma_server():
    running, server, thread = start_gemma_server(max_model_len=4096)
    running.llm.engine.grammar().prepare()
    yield running
    server.should_exit = True
    thread.join(10)


@pytest.mark.slow
def test_bfcl_required_calls_parse_and_validate_on_gemma(gemma_server):
    """tool_choice=required on the real gemma-3-270m: every question gets calls (no cut-off reply)
    whose arguments parse and validate under the function's schema, and no call repeats."""
    from concurrent.futures import ThreadPoolExecutor

    from fleetlm.evals.bfcl import (
        build_request,
        default_root,
        load_category,
        to_openai_tools,
    )

    if not default_root().is_dir():
        pytest.skip(f"BFCL data not found at {default_root()} (see ../shared/data/SOURCES.md)")
    questions = [q for cat in BFCL_CATEGORIES for q in load_category(cat, limit=BFCL_PER_CATEGORY)]
    client = gemma_server.client(timeout=600)

    def ask(question):
        tools = to_openai_tools(question.functions)
        body = build_request(question, tools, model=gemma_server.model, tool_choice="required", max_tokens=1024)
        return question, tools, client.chat.completions.create(**body)

    with ThreadPoolExecutor(8) as pool:  # concurrent requests share engine steps
        results = list(pool.map(ask, questions))
    assert len(results) == len(BFCL_CATEGORIES) * BFCL_PER_CATEGORY
    for question, tools, response in results:
        choice = response.choices[0]
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools.tools}
        assert choice.finish_reason == "tool_calls", question.id
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
        assert calls and len(set(calls)) == len(calls), question.id
        for name, arguments in calls:
            jsonschema.validate(json.loads(arguments), schemas[name])
