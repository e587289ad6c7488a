"""response_format through the openai client: the content always parses and validates."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.api.conftest import start_server

SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["color", "count", "ok", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def structured_server(tiny_gemma):
    running, srv, thread = start_server(tiny_gemma)
    yield running
    srv.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_schema_output_validates(structured_server, seed):
    r = structured_server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "describe"}], max_tokens=120, temperature=1.0,
        seed=seed, response_format={"type": "json_schema",
                                    "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}})
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_object_streamed_equals_unstreamed(structured_server):
    client = structured_server.client()
    kw = dict(model="tiny", messages=[{"role": "user", "content": "{"}], max_tokens=60, temperature=0.8,
              seed=3, response_format={"type": "json_object"})
    full = client.chat.completions.create(**kw).choices[0]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                       if c.choices)
    assert streamed == full.message.content
    if full.finish_reason == "stop":
        assert isinstance(json.loads(full.message.content), dict)


def test_invalid_schema_is_a_400(structured_server):
    resp = httpx.post(f"{structured_server.base_url}/v1/chat/completions", timeout=30, json={
        "model": "tiny", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "objekt"}}}})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "response_format"


def test_a_grammar_that_compiles_too_slowly_is_a_400_and_blocks_no_one(tiny_gemma):
    """Requests are prepared (template, tokens, grammar) off the event loop under a time bound."""
    import threading
    import time

    running, srv, thread = start_server(tiny_gemma, prepare_timeout_s=0.5)
    compiler = running.llm.engine.grammar()
    real = compiler.compile

    def slow(spec):  # stands in for a schema that takes seconds to compile
        time.sleep(2.0)
        return real(spec)

    compiler.compile = slow
    try:
        answers = {}

        def structured():
            answers["slow"] = httpx.post(f"{running.base_url}/v1/chat/completions", timeout=30, json={
                "model": "tiny", "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"}})

        t = threading.Thread(target=structured)
        t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        plain = httpx.post(f"{running.base_url}/v1/completions", timeout=30,
                           json={"model": "tiny", "prompt": "meanwhile", "max_tokens": 2})
        assert plain.status_code == 200 and time.monotonic() - t0 < 1.5  # not stuck behind the compile
        t.join(30)
        err = answers["slow"].json()["error"]
        assert answers["slow"].status_code == 400 and err["param"] == "response_format"
        assert "took over 0.5 s" in err["message"]
    finally:
        compiler.compile = real
        srv.should_exit = True
        thread.join(10)
