"""A server with speculative decoding answers the real `openai` client exactly as one
without it (greedy), streamed and not, with and without tools."""

from __future__ import annotations

import openai
import pytest

from tests.api.conftest import start_server

WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"]}}}]
ASK = "Repeat after me: alpha beta gamma delta, alpha beta gamma delta, alpha beta gamma delta, alpha beta"


@pytest.fixture(scope="module")
def servers(tiny_gemma):
    started = [start_server(tiny_gemma, engine_kw={"max_model_len": 512, **kw}) for kw in ({}, {"speculative": "ngram"})]
    yield [s[0] for s in started]
    for _, srv, thread in started:
        srv.should_exit = True
        thread.join(10)


def ask(running, stream: bool, **extra) -> tuple[str, list]:
    client = openai.OpenAI(base_url=running.base_url + "/v1", api_key="x")
    ask = ASK[:40] if extra else ASK  # the tools block is long in byte tokens
    body = dict(model=running.model, messages=[{"role": "user", "content": ask}], max_tokens=48,
                temperature=0, **extra)
    if not stream:
        msg = client.chat.completions.create(**body).choices[0].message
        return msg.content or "", [(c.function.name, c.function.arguments) for c in msg.tool_calls or []]
    text, args = "", {}
    for chunk in client.chat.completions.create(stream=True, **body):
        delta = chunk.choices[0].delta if chunk.choices else None
        text += (delta.content or "") if delta else ""
        for c in (delta.tool_calls or []) if delta else []:
            name, so_far = args.get(c.index, ("", ""))
            args[c.index] = (name + (c.function.name or ""), so_far + (c.function.arguments or ""))
    return text, [args[i] for i in sorted(args)]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tools", [False, True])
def test_same_answers_with_speculation(servers, stream, tools):
    extra = {"tools": WEATHER, "tool_choice": "required"} if tools else {}
    plain, spec = (ask(s, stream, **extra) for s in servers)
    assert spec == plain
    assert plain[1] if tools else plain[0]  # something was generated to compare


def test_drafts_were_verified(servers):
    proposer = servers[1].llm.engine.scheduler.proposer
    assert proposer.verifications > 0 and proposer.accepted > 0
