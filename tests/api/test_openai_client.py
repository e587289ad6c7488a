"""The HTTP API through the real `openai` client against a real server on 127.0.0.1."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.api.conftest import start_server


def test_models_lists_the_served_model(server):
    ids = [m.id for m in server.client().models.list().data]
    assert "tiny" in ids


@pytest.mark.parametrize("kind", ["completions", "chat"])
def test_streamed_and_unstreamed_text_agree_for_a_seed(server, kind):
    client = server.client()
    common = dict(model="tiny", max_tokens=20, temperature=0.9, top_p=0.95, seed=1234,
                  extra_body={"ignore_eos": True})
    if kind == "completions":
        full = client.completions.create(prompt="hello world", **common)
        text = full.choices[0].text
        streamed = "".join(c.choices[0].text for c in client.completions.create(prompt="hello world", stream=True,
                                                                                 **common) if c.choices)
    else:
        msgs = [{"role": "user", "content": "hello world"}]
        full = client.chat.completions.create(messages=msgs, **common)
        text = full.choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in
                           client.chat.completions.create(messages=msgs, stream=True, **common) if c.choices)
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 20
    assert text == streamed
    assert len(text) > 0


def test_stream_include_usage_and_cached_tokens(server):
    client = server.client()
    prompt = "a shared prefix that is long enough to fill a couple of KV blocks " * 2
    client.completions.create(model="tiny", prompt=prompt, max_tokens=2, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage.completion_tokens == 3
    assert usage.prompt_tokens == len(prompt) + 1  # byte tokenizer + BOS
    assert usage.prompt_tokens_details.cached_tokens >= 16


def test_n_stop_and_logprobs(server):
    client = server.client()
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "count"}], n=3,
                                       max_tokens=8, temperature=1.0, seed=5, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens == 24
    for c in r.choices:
        lp = c.logprobs.content
        assert len(lp) == 8
        assert all(len(t.top_logprobs) == 3 for t in lp)
        assert all(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in lp)
    greedy = client.completions.create(model="tiny", prompt="stop test", max_tokens=12, temperature=0)
    text = greedy.choices[0].text
    if len(text) >= 4:
        stop = text[2:4]
        cut = client.completions.create(model="tiny", prompt="stop test", max_tokens=12, temperature=0, stop=[stop])
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].text == text[: text.find(stop)]


def test_fireworks_extensions_are_accepted(server):
    r = server.client().completions.create(model="tiny", prompt="x", max_tokens=4, temperature=0.7,
                                           extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.2})
    assert r.usage.completion_tokens == 4


def _post(server, path, body=None, content=None, headers=None):
    return httpx.post(f"{server.base_url}{path}", json=body, content=content,
                      headers={"content-type": "application/json", **(headers or {})}, timeout=30)


def _assert_error(resp, status):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    return err


def test_error_statuses_and_shapes(server):
    _assert_error(_post(server, "/v1/completions", content=b"{not json"), 400)
    _assert_error(_post(server, "/v1/completions", content=b"\xff\xfe\xfa"), 400)
    _assert_error(_post(server, "/v1/completions", {"model": "tiny", "prompt": "x", "temperature": "hot"}), 400)
    err = _assert_error(_post(server, "/v1/completions", {"model": "tiny", "prompt": "x", "bogus": 1}), 400)
    assert "bogus" in err["message"]
    _assert_error(_post(server, "/v1/completions", {"model": "tiny", "prompt": "x", "n": -1}), 400)
    _assert_error(_post(server, "/v1/completions", {"model": "nope", "prompt": "x"}), 404)
    err = _assert_error(_post(server, "/v1/completions", {"model": "tiny", "prompt": "y" * 400}), 400)
    assert "256" in err["message"] and "401" in err["message"]  # context and prompt token counts
    _assert_error(_post(server, "/v1/chat/completions", {"model": "tiny", "messages": []}), 400)
    _assert_error(_post(server, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 10**9}), 400)
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="missing", prompt="x")
    with pytest.raises(openai.BadRequestError):
        server.client().completions.create(model="tiny", prompt="x", temperature=3)
    # and the server still serves
    assert server.client().completions.create(model="tiny", prompt="x", max_tokens=2).usage.completion_tokens == 2


def test_disconnected_stream_frees_its_kv_blocks(server):
    kv = server.llm.engine.kv
    total = kv.num_blocks
    with httpx.stream("POST", f"{server.base_url}/v1/completions", timeout=30,
                      json={"model": "tiny", "prompt": "z" * 100, "max_tokens": 150, "stream": True,
                            "ignore_eos": True}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                break
        assert kv.num_free_blocks < total  # the request holds blocks while it runs
    deadline = time.monotonic() + 10
    while kv.num_free_blocks != total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kv.num_free_blocks == total
    assert not server.llm.engine.requests


def test_metrics_and_health(server):
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    text = httpx.get(f"{server.base_url}/metrics").text
    for name in ["fleetlm_requests_total", "fleetlm_generation_tokens_total", "fleetlm_num_requests_waiting",
                 "fleetlm_time_to_first_token_seconds_bucket", "fleetlm_time_per_output_token_seconds_bucket",
                 "fleetlm_kv_cache_usage_ratio"]:
        assert name in text


def test_api_key_required_when_configured(tiny_gemma):
    running, srv, thread = start_server(tiny_gemma, api_key="sekret")
    try:
        resp = httpx.get(f"{running.base_url}/v1/models")
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            running.client(api_key="wrong").models.list() if False else \
                __import__("openai").OpenAI(base_url=f"{running.base_url}/v1", api_key="wrong",
                                            max_retries=0).models.list()
        assert running.client().models.list().data[0].id == "tiny"
    finally:
        srv.should_exit = True
        thread.join(10)


def test_overload_gets_429_with_retry_after(tiny_gemma):
    running, srv, thread = start_server(tiny_gemma, max_pending_requests=1)
    engine = running.llm.engine
    real_step = engine.step

    def slow_step():  # the tiny model is too fast to ever queue; pace it like a real one
        time.sleep(0.02)
        return real_step()

    engine.step = slow_step
    try:
        with httpx.stream("POST", f"{running.base_url}/v1/completions", timeout=30,
                          json={"model": "tiny", "prompt": "hold", "max_tokens": 200, "stream": True,
                                "ignore_eos": True}) as resp:
            lines = resp.iter_lines()  # keep the iterator: dropping it closes the stream
            next(lines)
            second = _post(running, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2})
            _assert_error(second, 429)
            assert second.headers["retry-after"] == "1"
    finally:
        srv.should_exit = True
        thread.join(10)
