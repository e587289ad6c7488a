"""Property-based fuzzing of every POST route, from the server's own OpenAPI schema.

1,000 bodies (hypothesis, fixed seed) drawn by `schema_strategies.body_strategy` from
GET /openapi.json (that is, `app.openapi()`), mostly valid so they reach the engine, the
embedder and the adapter registry, with hostile values mixed in; sent over real HTTP to a
real uvicorn on 127.0.0.1. The properties: never a 5xx (nor a 5xx in-band in a stream), every
error OpenAI-shaped, and afterwards normal requests succeed with nothing left held."""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.api.conftest import start_server
from tests.api.schema_strategies import body_strategy, text, weighted

CASES = int(os.environ.get("FLEETLM_FUZZ_CASES", 1000))
SEED = int(os.environ.get("FLEETLM_FUZZ_SEED", 20261205))  # another seed explores further
OTHER_MODELS = ["tiny:nope", "nope", "upstream/x/y", "router/auto", "compound/x", "", "\ud800", "a\x00b"]
SCHEMAS = [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, {"type": "integer"},
           {"enum": ["x", 1, None]}, {"$ref": "#/nowhere"}, {"type": "string", "pattern": "(a+)+$"},
           {"type": "array", "minItems": 10**9}, {"type": "wizard"}, {"anyOf": []}]
HINTS = {
    "schema": st.sampled_from(SCHEMAS),
    "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": st.sampled_from(["f", "get_weather", ""]) | text},
        optional={"description": text, "parameters": st.sampled_from(SCHEMAS)})}), max_size=3),
    "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]),
    "lora_name": st.sampled_from(["a1", "tiny", "../x", ""]),
    "lora_path": st.sampled_from(["", ".", "/", "/nonexistent", "~no-such-user-here/x", "/dev/zero", "/proc/self",
                                  "a\x00b", "\ud800", "x" * 5000]) | text,
}


def hints_for(route: str) -> dict:
    """HINTS, and a `model` that is mostly the one the route serves."""
    model = "all-minilm-l6-v2" if route == "/v1/embeddings" else "tiny"
    return {**HINTS, "model": weighted((8, st.just(model)), (2, st.sampled_from(OTHER_MODELS) | text))}


def cheap(body):
    """Cap what generating for `body` costs: 2 tokens and 2 choices, unless a value is past
    what the server accepts anyway (then it is a quick 400)."""
    if isinstance(body, dict) and "model" in body and "input" not in body and "lora_name" not in body:
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = 2
        for key, cap in (("max_tokens", 2), ("max_completion_tokens", 2), ("n", 2)):
            if type(body.get(key)) is int and cap < body[key] <= 2**20:
                body[key] = cap
    return body


@pytest.fixture(scope="module")
def fuzz_server(tiny_gemma):
    """The tiny model with LoRA enabled, and the embedder: every POST route does real work."""
    from fleetlm.models.embeddings import Embedder

    running, srv, thread = start_server(tiny_gemma, embedder=Embedder(), max_pending_requests=64,
                                        engine_kw={"enable_lora": True, "max_loras": 2})
    yield running
    srv.should_exit = True
    thread.join(10)


def check_answer(resp: httpx.Response, sent: str) -> None:
    """No 5xx; an error is OpenAI-shaped; a stream carries no server error in-band."""
    where = (resp.request.url.path, sent[:300], resp.text[:300])
    assert resp.status_code < 500, where
    if resp.status_code != 200:
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str), where
        assert err["message"] and 400 <= resp.status_code < 500, where
    elif resp.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", where
        for event in events[:-1]:
            assert json.loads(event).get("error", {}).get("type") != "server_error", where


def test_fuzzed_bodies_on_every_post_route_never_get_a_5xx(fuzz_server):
    with httpx.Client(base_url=fuzz_server.base_url, timeout=120) as client:
        openapi = client.get("/openapi.json").json()
        routes = sorted(p for p, ops in openapi["paths"].items() if "post" in ops)
        assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/load_lora_adapter"} <= set(routes)
        statuses: Counter[tuple[str, int]] = Counter()

        @seed(SEED)
        @settings(max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=st.sampled_from(routes).flatmap(lambda r: st.tuples(st.just(r), body_strategy(
            openapi, r, hints_for(r), cheap))))
        def check(case):
            route, sent = case
            resp = client.post(route, content=sent.encode("utf-8", "surrogatepass"),
                               headers={"content-type": "application/json"})
            statuses[route, resp.status_code] += 1
            # a dead engine fails every later request: name what killed it, not the victim
            assert fuzz_server.llm.stats().error is None, (sent[:300], fuzz_server.llm.stats().error[:500])
            check_answer(resp, sent)

        t0 = time.monotonic()
        check()
        print(f"\n{sum(statuses.values())} cases in {time.monotonic() - t0:.1f} s:",
              dict(sorted(statuses.items())))
        assert sum(statuses.values()) >= CASES
        for route in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            # the generator reaches real work, not just 400s (hypothesis also mixes in constants
            # from the modules loaded, so the exact counts vary with what else the run imported)
            assert statuses[route, 200] >= 10, statuses
        assert_still_serving(client, fuzz_server.llm)


def assert_still_serving(client: httpx.Client, llm) -> None:
    """Normal requests succeed, and no engine row or KV block is left held."""
    chat = client.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 3,
                                                     "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 3
    done = client.post("/v1/completions", json={"model": "tiny", "prompt": "still alive", "max_tokens": 3})
    assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 3
    emb = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "fine"})
    assert emb.status_code == 200 and len(emb.json()["data"][0]["embedding"]) == 384
    deadline = time.monotonic() + 30
    while (llm.stats().running or llm.engine.kv.num_free_blocks != llm.engine.kv.num_blocks) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert llm.stats().running == 0 and llm.stats().waiting == 0
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks
