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
