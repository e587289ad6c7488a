"""BFCL harness: doc → tools conversion, request building, response parsing, the async runner
(against an in-process HTTP handler; the real-server test belongs with the tools protocol)."""

import asyncio
import json

import httpx
import jsonschema
import pytest

from fleetlm.cli import build_parser
from fleetlm.evals.bfcl import (
    Question,
    answer_calls,
    build_request,
    convert_schema,
    load_category,
    openai_name,
    parse_response,
    to_openai_tools,
)
from fleetlm.evals.cli import (
    RunConfig,
    api_base,
    format_table,
    run_questions,
    summarise,
)

DOCS = [
    {"name": "math.hypot", "description": "Euclidean norm.", "parameters": {"type": "dict", "required": ["x"],
     "properties": {"x": {"type": "float"}, "pts": {"type": "tuple", "items": {"type": "integer"}},
                    "opts": {"type": "dict", "properties": {"v": {"type": "any"}}, "optional": True},
                    "rows": {"type": "array", "items": {"type": "dict", "properties": {"a": {"type": "string"}}}}}}},
    {"name": "math_hypot", "description": "a clash once dots are mapped",
     "parameters": {"type": "dict", "properties": {}, "required": []}},
]


def test_docs_become_valid_openai_tools_with_reversible_names():
    ts = to_openai_tools(DOCS)
    names = [t["function"]["name"] for t in ts.tools]
    assert names == ["math_hypot", "math_hypot_2"]
    assert [ts.bfcl_name(n) for n in names] == ["math.hypot", "math_hypot"]
    assert ts.bfcl_name("unknown") == "unknown"
    params = ts.tools[0]["function"]["parameters"]
    jsonschema.Draft202012Validator.check_schema(params)
    props = params["properties"]
    assert params["type"] == "object" and params["required"] == ["x"]
    assert props["x"] == {"type": "number"}
    assert props["pts"] == {"type": "array", "items": {"type": "integer"}}
    assert props["opts"] == {"type": "object", "properties": {"v": {}}}  # any: no constraint; no "optional"
    assert props["rows"]["items"]["type"] == "object"
    jsonschema.validate({"x": 3, "pts": [1, 2], "opts": {"v": [1]}, "rows": [{"a": "b"}]}, params)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"x": "3"}, params)


def test_names_and_bad_types():
    assert openai_name("a.b/c d") == "a_b_c_d"
    assert len(openai_name("x" * 100)) == 64
    assert openai_name("x" * 100, taken={"x" * 64}) == "x" * 62 + "_2"
    with pytest.raises(ValueError, match="unknown BFCL type"):
        convert_schema({"type": "quaternion"})


def question(category="simple_python", gt=None):
    return Question("q0", category, [[{"role": "user", "content": "norm of 3, 4?"}]], DOCS,
                    gt if gt is not None else [{"math.hypot": {"x": [3.0], "pts": [[3, 4], ""]}}])


def test_build_request():
    q = question()
    body = build_request(q, to_openai_tools(q.functions), model="m", tool_choice="required")
    assert body["messages"] == [{"role": "user", "content": "norm of 3, 4?"}]
    assert body["tool_choice"] == "required" and body["temperature"] == 0.0 and len(body["tools"]) == 2
    with pytest.raises(ValueError, match="tool_choice"):
        build_request(q, to_openai_tools(q.functions), model="m", tool_choice="sometimes")
    multi = Question("m", "multi_turn_base", [[{"role": "user", "content": "a"}]] * 2, DOCS, [])
    with pytest.raises(ValueError, match="single-turn"):
        build_request(multi, to_openai_tools(DOCS), model="m")


def completion(calls):
    """An OpenAI chat completion carrying these (name, arguments-string) calls."""
    tool_calls = [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
                  for i, (n, a) in enumerate(calls)]
    message = {"role": "assistant", "content": None, "tool_calls": tool_calls or None}
    return {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}]}


def test_parse_response():
    ts = to_openai_tools(DOCS)
    calls = parse_response(completion([("math_hypot", '{"x": 3}'), ("math_hypot_2", "{not json")]), ts)
    assert calls == [{"math.hypot": {"x": 3}}, {"math_hypot": "{not json"}]
    assert parse_response(completion([]), ts) == []
    with pytest.raises(ValueError, match="not a chat-completions"):
        parse_response({"error": {"message": "boom"}}, ts)


def fake_server(answer_for):
    """An httpx transport answering each chat request with ``answer_for(body)`` calls."""
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        seen.append(body)
        if body["messages"][0]["content"] == "fail":
            return httpx.Response(500, json={"error": {"message": "boom"}})
        return httpx.Response(200, json=completion(answer_for(body)))

    return httpx.MockTransport(handle), seen


def run(transport, questions, **kw):
    async def go():
        async with httpx.AsyncClient(transport=transport, base_url=api_base("http://t")) as client:
            return await run_questions(client, questions, RunConfig("m", **kw))
    return asyncio.run(go())


def test_runner_scores_right_wrong_and_failed_requests():
    def answer(body):
        text = body["messages"][0]["content"]
        return [("math_hypot", json.dumps({"x": 4.0 if "wrong" in text else 3}))]

    transport, seen = fake_server(answer)
    qs = [question(), question(), question(), question("irrelevance", [])]
    qs[1] = Question("q1", "simple_python", [[{"role": "user", "content": "wrong"}]], DOCS, qs[0].ground_truth)
    qs[2] = Question("q2", "simple_python", [[{"role": "user", "content": "fail"}]], DOCS, qs[0].ground_truth)
    results = run(transport, qs, concurrency=2)
    assert [r.valid for r in results] == [True, False, False, False]  # irrelevance: a call was made
    assert results[1].error_type == "value_error:others" and results[2].error_type == "request"
    assert results[0].calls == [{"math.hypot": {"x": 3}}] and len(seen) == 4
    scores = summarise(results)
    assert [(s.category, s.n, s.correct, s.request_errors) for s in scores] == [
        ("simple_python", 3, 1, 1), ("irrelevance", 1, 0, 0)]
    table = format_table(scores, model="m", tool_choice="auto")
    assert table.splitlines()[-1] == "overall accuracy: 0.167"


def test_cli_parser_and_base_url():
    args = build_parser().parse_args(["eval", "bfcl", "--model", "m", "--categories", "simple_python",
                                      "--limit", "3", "--tool-choice", "required"])
    assert (args.model, args.limit, args.tool_choice) == ("m", 3, "required")
    assert api_base("http://h:1/") == api_base("http://h:1/v1") == "http://h:1/v1"
    bad = build_parser().parse_args(["eval", "bfcl", "--model", "m", "--categories", "multi_turn_base"])
    assert bad.func(bad) == 2


@pytest.mark.slow
@pytest.mark.parametrize("category", ["simple_python", "multiple", "parallel_multiple", "live_parallel"])
def test_gold_answers_served_over_http_score_100(category):
    from fleetlm.evals.bfcl import default_root

    if not default_root().is_dir():
        pytest.skip(f"BFCL data not found at {default_root()} (see ../shared/data/SOURCES.md)")
    questions = load_category(category, limit=40)
    by_text = {json.dumps(q.turns[0]): q for q in questions}

    def answer(body):
        q = by_text[json.dumps(body["messages"])]
        to_openai = {v: k for k, v in to_openai_tools(q.functions).to_bfcl.items()}
        return [(to_openai[n], json.dumps(a)) for c in answer_calls(q.ground_truth, q.functions)
                for n, a in c.items()]

    transport, _ = fake_server(answer)
    results = run(transport, questions, concurrency=4)
    assert [r.id for r in results if not r.valid] == []


@pytest.mark.slow
def test_multi_turn_questions_load_and_convert():
    from fleetlm.evals.bfcl import default_root

    if not (default_root() / "BFCL_v4_multi_turn_base.json").is_file():
        pytest.skip(f"BFCL multi-turn data not found under {default_root()}")
    questions = load_category("multi_turn_base", limit=20)
    for q in questions:
        assert len(q.turns) == len(q.ground_truth) > 1 and q.functions
        tools = to_openai_tools(q.functions)
        for t in tools.tools:
            jsonschema.Draft202012Validator.check_schema(t["function"]["parameters"])
        assert {tools.bfcl_name(t["function"]["name"]) for t in tools.tools} == {d["name"] for d in q.functions}
