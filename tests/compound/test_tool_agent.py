"""compound/tool-agent: planner -> executor -> joiner orchestration with scripted fake
Targets (as DSPy's DummyLM), and one end-to-end request through a real HTTP server with the
real `openai` client, where the joiner is a tiny local model on the engine."""

import asyncio
import json
import sqlite3
import threading

import pytest

from fleetlm.api.dispatch import sse_events
from fleetlm.compound.programs.tool_agent import ToolAgentConfig, build_tool_agent, build_tools
from fleetlm.compound.tools.registry import Tool, ToolRegistry
from fleetlm.openai import format as fmt
from fleetlm.openai.chunks import ChatChunk, ChatDelta, ModelCard, Usage, collect_chat
from fleetlm.openai.errors import APIError
from fleetlm.openai.protocol import ChatCompletionRequest


async def lookup(city: str) -> dict:
    """Population of a city, in millions."""
    await asyncio.sleep(0.2)
    return {"city": city, "population": {"Oslo": 0.7, "Lima": 10.0, "Pune": 7.0}[city]}


def total(values: list[float]) -> float:
    """Sum of numbers."""
    return round(sum(values), 3)


class Scripted:
    """A fake catalog Target: answers each chat with the next canned reply (or error status)."""

    def __init__(self, model_id, replies):
        self.model_id, self.replies, self.seen = model_id, list(replies), []

    def card(self):
        return ModelCard(self.model_id, owned_by="test")

    def engines(self):
        return frozenset()

    async def chat(self, req):
        self.seen.append([m.model_dump() for m in req.messages])
        reply = self.replies.pop(0)
        if isinstance(reply, int):
            raise APIError(reply, "backend exploded")
        yield ChatChunk(served_by=self.model_id, choices=[ChatDelta(0, "assistant", reply, finish_reason="stop")],
                        usage=Usage(10, 5, 0))


PLAN = """Thought: three lookups at once, then add.
1. lookup(city="Oslo")
2. lookup(city="Lima")
3. lookup("Pune")
4. total(values=[$1.population, $2.population, $3.population])
5. join()"""


def agent(planner_replies, joiner_replies=None, **cfg):
    tools = ToolRegistry([Tool.from_function(lookup), Tool.from_function(total)])
    planner = Scripted("fake/planner", planner_replies)
    joiner = Scripted("fake/joiner", joiner_replies) if joiner_replies is not None else planner
    config = ToolAgentConfig(name="tool-agent", planner=planner.model_id, joiner=joiner.model_id,
                             tools=["tests.compound.test_tool_agent:total"], **cfg)
    target = build_tool_agent(config, {planner.model_id: planner, joiner.model_id: joiner}, tools=tools)
    return target, planner, joiner


def ask(target, content="Total population of Oslo, Lima and Pune?", **kw):
    """(the SSE events of a streamed request, or None; the JSON body of one that is not)."""
    req = ChatCompletionRequest(model=target.model_id, messages=[{"role": "user", "content": content}], **kw)
    if req.stream:
        async def events():
            chunks = target.chat(req)
            first = await anext(chunks)
            include = bool(req.stream_options and req.stream_options.include_usage)
            return [e async for e in sse_events(first, chunks, rid="x", include_usage=include)]

        return asyncio.run(events()), None
    return None, fmt.chat_completion(asyncio.run(collect_chat(target.chat(req))), "x")


def test_plan_runs_concurrently_and_joiner_answers():
    target, planner, joiner = agent([PLAN], ["Thought: summed.\nAction: Finish(About 17.7 million people.)"])
    resp, body = ask(target)
    assert body["model"] == "compound/tool-agent" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "About 17.7 million people."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
    trace = body["fleetlm_trace"]
    calls = {c["id"]: c for c in trace["calls"]}
    assert [c["tool"] for c in trace["calls"]] == ["lookup"] * 3 + ["total"]
    assert calls["3"]["args"] == {"city": "Pune"} and calls["4"]["args"] == {"values": [0.7, 10.0, 7.0]}
    assert calls["4"]["result"] == 17.7 and all(c["error"] is None and c["attempts"] == 1 for c in calls.values())
    lookups_end = max(calls[i]["end_s"] for i in "123")
    assert max(calls[i]["start_s"] for i in "123") < min(calls[i]["end_s"] for i in "123")  # overlapped
    assert calls["4"]["start_s"] >= lookups_end - 1e-6 and calls["1"]["duration_s"] >= 0.19
    assert lookups_end - min(calls[i]["start_s"] for i in "123") < 0.5  # not 0.6 s one after another
    assert trace["rounds"][0]["plan"] == PLAN and trace["wall_s"] >= 0.2
    system = planner.seen[0][0]
    assert system["role"] == "system" and "- lookup(city: string): Population of a city" in system["content"]
    assert "- total(values: array[number]): Sum of numbers." in system["content"]
    assert '1. lookup(city="...")' in system["content"]
    assert "4. total(values=[0.7, 10.0, 7.0]) -> 17.7" in joiner.seen[0][1]["content"]  # substituted args
    assert "Replan" in joiner.seen[0][0]["content"]  # a second round was still possible


def test_replan_then_finish():
    target, planner, joiner = agent(
        ['1. lookup(city="Oslo")\n2. join()', '1. lookup(city="Lima")\n2. join()'],
        ["Thought: need Lima too\nAction: Replan(look up Lima)", "Action: Finish(Oslo 0.7, Lima 10)"])
    _, body = ask(target)
    assert body["choices"][0]["message"]["content"] == "Oslo 0.7, Lima 10"
    rounds = body["fleetlm_trace"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1] and [c["round"] for c in body["fleetlm_trace"]["calls"]] == [0, 1]
    second = planner.seen[1]
    assert second[-1]["role"] == "user" and "look up Lima" in second[-1]["content"]
    assert '"population": 0.7' in second[-1]["content"]
    assert "Replan" not in joiner.seen[1][0]["content"]  # the last round must finish


def test_unparseable_plan_is_sent_back_and_last_round_must_answer():
    target, planner, joiner = agent(["1. lookup(city=Oslo)", '1. lookup(city="Oslo")\n2. fly(to="moon")'],
                                    ["Thought: nothing ran\nAction: Finish(I could not look it up.)"], max_rounds=2)
    _, body = ask(target)
    rounds = body["fleetlm_trace"]["rounds"]
    assert "expected a value" in rounds[0]["error"] and "unknown tool(s) fly" in rounds[1]["error"]
    assert "That plan cannot run" in planner.seen[1][-1]["content"]
    assert body["choices"][0]["message"]["content"] == "I could not look it up."
    assert "(no tool results)" in joiner.seen[0][1]["content"]


def test_errors_reach_the_joiner_and_text_without_action_is_the_answer():
    target, _, joiner = agent(['1. lookup(city="Paris")\n2. total(values=[$1.population])'],
                              ["Paris is not in my data."], max_rounds=1)
    _, body = ask(target)
    calls = body["fleetlm_trace"]["calls"]
    assert "KeyError" in calls[0]["error"] and calls[0]["attempts"] == 2  # retries=1 by default
    assert calls[1]["error"].startswith("skipped: input $1 failed")
    assert "-> ERROR: KeyError" in joiner.seen[0][1]["content"]
    assert body["choices"][0]["message"]["content"] == "Paris is not in my data."


def test_streaming_carries_answer_and_trace():
    target, _, _ = agent([PLAN], ["Action: Finish(17.7 million)"])
    sse, _ = ask(target, stream=True, stream_options={"include_usage": True})
    events = [e[len("data: "):].strip() for e in sse]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    finish = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    assert text == "17.7 million" and finish["choices"][0]["finish_reason"] == "stop"
    assert len(finish["fleetlm_trace"]["calls"]) == 4 and chunks[-1]["usage"]["total_tokens"] == 30
    steps = [c["fleetlm_step"] for c in chunks if "fleetlm_step" in c]  # the plan, streamed as it ran
    assert [s["name"] for s in steps] == ["plan"] and len(steps[0]["calls"]) == 4


def test_bad_requests_and_failing_planner():
    target, _, _ = agent([502, 400])
    tools = [{"type": "function", "function": {"name": "x", "parameters": {"type": "object"}}}]
    for kw, param in (({"tools": tools}, "tools"), ({"n": 2}, "n"), ({"logprobs": True}, "logprobs")):
        with pytest.raises(APIError) as err:
            ask(target, **kw)
        assert err.value.status == 400 and err.value.param == param
    with pytest.raises(APIError, match="fake/planner failed \\(HTTP 502\\): backend exploded") as err:
        ask(target)
    assert err.value.status == 502
    with pytest.raises(APIError) as err:
        ask(target)
    assert err.value.status == 400


def test_config_validation_and_building_tools(tmp_path):
    with pytest.raises(ValueError, match="Unknown ToolAgentConfig key"):
        ToolAgentConfig.from_dict({"name": "a", "planner": "p", "tools": ["m:f"], "planer": "x"})
    with pytest.raises(ValueError, match="at least one tool"):
        ToolAgentConfig(name="a", planner="p")
    with pytest.raises(ValueError, match="missing keys \\['parameters'\\]"):
        ToolAgentConfig(name="a", planner="p", http=[{"name": "h", "url": "http://x", "description": "d"}])
    with pytest.raises(ValueError, match="max_rounds"):
        ToolAgentConfig(name="a", planner="p", tools=["m:f"], max_rounds=0)
    with pytest.raises(ValueError, match="name"):
        ToolAgentConfig(name="a b", planner="p", tools=["m:f"])
    db = tmp_path / "t.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    conn.close()
    cfg = ToolAgentConfig.from_dict({
        "name": "a", "planner": "p", "tools": ["tests.compound.test_tool_agent:lookup"], "sqlite": str(db),
        "http": [{"name": "h", "url": "http://127.0.0.1:9/x", "description": "d", "method": "GET",
                  "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]})
    tools = build_tools(cfg)
    assert [t.name for t in tools] == ["lookup", "h", "sql"]
    with pytest.raises(ValueError, match="unknown model ids \\['p'\\]"):
        build_tool_agent(cfg, {}, tools=tools)
    target = build_tool_agent(cfg, {"p": Scripted("p", [])}, tools=tools)
    card = fmt.model_card(target.card(), 0)
    assert card["id"] == "compound/a" and card["planner"] == card["joiner"] == "p" and card["tools"] == ["lookup", "h", "sql"]


def test_end_to_end_over_http_with_a_tiny_joiner(tiny_gemma):
    """A real server on 127.0.0.1: the fake planner and the agent sit in the catalog next to
    the tiny local model (the joiner); the openai client sees an ordinary chat completion."""
    import uvicorn

    from fleetlm.api.app import create_app
    from fleetlm.backends.local import LocalTarget
    from fleetlm.backends.local_inputs import EngineInputs
    from fleetlm.catalog import Catalog, Fleet
    from fleetlm.config import EngineConfig, ServerConfig
    from fleetlm.engine.async_engine import AsyncLLM
    from tests.api.conftest import free_port, wait_healthy

    llm = AsyncLLM(EngineConfig(model=str(tiny_gemma), dtype="float32", max_model_len=512))
    local = LocalTarget("tiny", llm, EngineInputs(llm.engine))
    planner = Scripted("fake/planner", ['1. lookup(city="Oslo")\n2. lookup(city="Lima")\n3. join()'])
    cfg = ToolAgentConfig(name="tool-agent", planner="fake/planner", joiner="tiny", max_rounds=1, max_tokens=8,
                          tools=["tests.compound.test_tool_agent:lookup"])
    by_id = {"tiny": local, "fake/planner": planner}
    fleet = Fleet(Catalog([local, planner, build_tool_agent(cfg, by_id)]), engines={"tiny": llm})
    app = create_app(ServerConfig(), fleet)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=30)
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model="compound/tool-agent",
                                           messages=[{"role": "user", "content": "Oslo or Lima: bigger?"}])
        assert r.model == "compound/tool-agent" and isinstance(r.choices[0].message.content, str)
        assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 100  # the tiny joiner really ran
        trace = r.model_extra["fleetlm_trace"]
        assert [c["args"]["city"] for c in trace["calls"]] == ["Oslo", "Lima"]
        assert all(c["duration_s"] >= 0.19 and c["error"] is None for c in trace["calls"])
        assert trace["rounds"][0]["joiner"] == r.choices[0].message.content or "Action" in trace["rounds"][0]["joiner"]
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("reply, expected", [
    ("Thought: x\nAction: Finish(42 (approx))", ("Finish", "42 (approx)")),
    ("Action: Finish(cut off by max_tokens", ("Finish", "cut off by max_tokens")),
    ("Action: Replan(more data) and chatter", ("Replan", "more data")),
    ("Action: Finish(a)\nThought: wait\nAction: Replan(c)", ("Replan", "c")),
    ("  a plain answer \n", ("Finish", "a plain answer")),
])
def test_joiner_replies(reply, expected):
    from fleetlm.compound.programs.tool_agent import _parse_joiner

    assert _parse_joiner(reply) == expected
