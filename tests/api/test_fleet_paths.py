"""One request through every kind of Target — local model, adapter, upstream (a second real
fleetlm server on 127.0.0.1), router, pool, tool agent — streamed and not, with the real
`openai` client: each is counted once in /metrics, with the tokens the client saw in
`usage`, under the model that served and under the model id asked for. Admission (429) holds
for a router over the local engine, and a client that goes away mid-request through a
router or the tool agent leaves no engine row behind."""

from __future__ import annotations

import json
import re
import socket
import time
from collections import Counter

import httpx
import pytest

from fleetlm.config import PoolConfig, RouterConfig, ToolAgentConfig, UpstreamConfig
from tests.api.conftest import start_server
from tests.engine.test_lora import make_adapter

CHAT = [{"role": "user", "content": "which way to the harbour?"}]


def metric(text: str, name: str, **labels) -> float:
    """The value of one Prometheus sample (0 when absent); labels must match exactly."""
    want = {k: str(v) for k, v in labels.items()}
    for line in text.splitlines():
        m = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")) == want:
            return float(m.group(2))
    return 0.0


@pytest.fixture(scope="module")
def fleet(tiny_gemma, tiny_gemma_2k, tmp_path_factory):
    adapters = tmp_path_factory.mktemp("fleet-adapters")
    make_adapter(tiny_gemma, adapters / "expert", seed=5, rank=4)
    peer, peer_srv, peer_thread = start_server(tiny_gemma)
    ups = [UpstreamConfig(name="peer", base_url=f"{peer.base_url}/v1", models=["tiny"],
                          price_input_per_mtok=1.0, price_output_per_mtok=2.0)]
    routers = [RouterConfig(name="r", candidates={"up": "upstream/peer/tiny", "local": "tiny"}, order=["local", "up"])]
    pools = [PoolConfig(model="tiny-pool", members={"a": "upstream/peer/tiny", "b": "tiny"}, prompt_edges=[1000],
                        buckets=[["a", "b"], ["b", "a"]])]
    agents = [ToolAgentConfig(name="agent", planner="tiny", max_rounds=1, max_tokens=6,
                              tools=["tests.compound.test_tool_agent:total"])]
    front, srv, thread = start_server(tiny_gemma_2k, upstreams=ups, routers=routers, pools=pools,
                                      tool_agents=agents, engine_kw={"enable_lora": True, "max_model_len": 1024},
                                      adapters_dir=str(adapters), max_pending_requests=64)
    yield front
    for s, t in ((srv, thread), (peer_srv, peer_thread)):
        s.should_exit = True
        t.join(10)


@pytest.mark.parametrize("stream", [False, True])
def test_every_path_is_counted_once_with_the_usage_the_client_saw(fleet, stream):
    client = fleet.client()
    before = httpx.get(f"{fleet.base_url}/metrics").text
    seen = []  # (asked, served, prompt tokens, completion tokens)
    for model in ["tiny", "tiny:expert", "upstream/peer/tiny", "router/r", "tiny-pool", "compound/agent"]:
        kw = dict(model=model, messages=CHAT, max_tokens=5)
        if not stream:
            r = client.chat.completions.with_raw_response.create(**kw)
            body = r.parse()
            served, usage = body.model, body.usage
        else:
            r = client.chat.completions.with_raw_response.create(stream=True, stream_options={"include_usage": True},
                                                                 **kw)
            chunks = list(r.parse())
            served, usage = chunks[-1].model, chunks[-1].usage
            assert {c.model for c in chunks} == {served} and all(c.usage is None for c in chunks[:-1])
        assert r.headers["x-fleetlm-served-by"] == served
        assert usage.completion_tokens >= 1 and usage.prompt_tokens > 0
        seen.append((model, served, usage.prompt_tokens, usage.completion_tokens))
    served_by = {asked: served for asked, served, _, _ in seen}
    assert served_by == {"tiny": "tiny", "tiny:expert": "tiny:expert", "upstream/peer/tiny": "upstream/peer/tiny",
                         "router/r": "tiny", "tiny-pool": "upstream/peer/tiny", "compound/agent": "compound/agent"}

    after = httpx.get(f"{fleet.base_url}/metrics").text
    delta = lambda name, **labels: metric(after, name, **labels) - metric(before, name, **labels)  # noqa: E731
    for asked, served, p, c in seen:
        assert delta("fleetlm_model_requests_total", model=asked, served_by=served, status=200) == 1, asked
        assert delta("fleetlm_requested_model_tokens_total", model=asked, kind="prompt") == p, asked
        assert delta("fleetlm_requested_model_tokens_total", model=asked, kind="completion") == c, asked
    by_served = Counter()
    for _, served, p, c in seen:
        by_served[(served, "prompt")] += p
        by_served[(served, "completion")] += c
    for (served, kind), n in by_served.items():
        assert delta("fleetlm_model_tokens_total", model=served, kind=kind) == n, (served, kind)
    # the upstream's cost at its configured prices, for the two requests it served
    up = [(p, c) for _, served, p, c in seen if served == "upstream/peer/tiny"]
    cost = sum(p * 1.0 + c * 2.0 for p, c in up) / 1e6
    assert delta("fleetlm_cost_usd_total", model="upstream/peer/tiny") == pytest.approx(cost)
    # routed requests, and the agent's sub-calls attributed to it (one planner call, one joiner call)
    assert delta("fleetlm_routed_requests_total", router="router/r", model="tiny") == 1
    assert delta("fleetlm_routed_requests_total", router="tiny-pool", model="upstream/peer/tiny") == 1
    assert delta("fleetlm_program_calls_total", program="compound/agent", model="tiny") >= 2
    agent = next(s for s in seen if s[0] == "compound/agent")
    assert delta("fleetlm_program_call_tokens_total", program="compound/agent", model="tiny",
                 kind="completion") == agent[3]


def slow_steps(llm, seconds: float):
    """Pace the tiny engine like a real one (it is too fast to ever be caught running)."""
    real = llm.engine.step

    def step():
        time.sleep(seconds)
        return real()

    llm.engine.step = step
    return lambda: setattr(llm.engine, "step", real)


def test_a_router_over_the_local_engine_is_admitted_like_the_engine(tiny_gemma):
    routers = [RouterConfig(name="r", candidates={"local": "tiny"}, order=["local"])]
    front, srv, thread = start_server(tiny_gemma, routers=routers, max_pending_requests=1)
    restore = slow_steps(front.llm, 0.02)
    hold = {"model": "tiny", "prompt": "hold", "max_tokens": 200, "stream": True, "ignore_eos": True}
    try:
        for holder, other in (("tiny", "router/r"), ("router/r", "tiny")):
            with httpx.stream("POST", f"{front.base_url}/v1/completions", timeout=30,
                              json={**hold, "model": holder}) as resp:
                lines = resp.iter_lines()
                next(lines)  # the holder is running
                second = httpx.post(f"{front.base_url}/v1/completions", timeout=30,
                                    json={"model": other, "prompt": "x", "max_tokens": 2})
                assert second.status_code == 429, (holder, other, second.text)
                assert second.headers["retry-after"] == "1"
            wait_idle(front.llm)
        ok = httpx.post(f"{front.base_url}/v1/completions", timeout=30,
                        json={"model": "router/r", "prompt": "x", "max_tokens": 2})
        assert ok.status_code == 200
    finally:
        restore()
        srv.should_exit = True
        thread.join(10)


def wait_idle(llm, timeout: float = 10.0) -> float:
    """Seconds until the engine has nothing running or waiting (AssertionError after `timeout`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        s = llm.stats()
        if s.running == 0 and s.waiting == 0 and s.streams == 0:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"engine still busy after {timeout} s: {llm.stats()}")


def wait_running(llm, rows: int = 1, timeout: float = 10.0) -> None:
    t0 = time.monotonic()
    while llm.stats().running < rows:
        assert time.monotonic() - t0 < timeout, "the request never reached the engine"
        time.sleep(0.01)


def hang_up_mid_request(base_url: str, body: dict, llm, rows: int = 1) -> None:
    """POST a chat request over a raw socket and close it once the engine runs `rows` rows
    for it (a program sends its headers only with its answer, so a client cannot wait for them)."""
    host, port = base_url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        wait_running(llm, rows)


@pytest.mark.parametrize("model", ["router/r", "compound/agent"])
def test_a_client_that_goes_away_aborts_every_engine_row(tiny_gemma_2k, model):
    routers = [RouterConfig(name="r", candidates={"local": "tiny"}, order=["local"])]
    agents = [ToolAgentConfig(name="agent", planner="tiny", max_rounds=2, max_tokens=200,
                              tools=["tests.compound.test_tool_agent:total"])]
    front, srv, thread = start_server(tiny_gemma_2k, routers=routers, tool_agents=agents,
                                      engine_kw={"max_model_len": 1024})
    restore = slow_steps(front.llm, 0.03)  # 200 tokens: 6 s per call, and the agent makes 3 or more
    body = {"model": model, "messages": CHAT, "max_tokens": 200, "stream": True}
    try:
        if model == "router/r":
            with httpx.stream("POST", f"{front.base_url}/v1/chat/completions", json=body, timeout=30) as resp:
                assert resp.status_code == 200
                next(line for line in resp.iter_lines() if line.startswith("data: "))  # mid-stream
                wait_running(front.llm)
        else:
            hang_up_mid_request(front.base_url, body, front.llm)
        assert wait_idle(front.llm, timeout=5) < 5  # far sooner than the request would have ended
        assert front.llm.stats().streams == 0 and not front.llm.engine.requests
        time.sleep(0.5)  # and nothing new starts: the agent's later calls were cancelled with it
        assert front.llm.stats().running == 0 and front.llm.stats().waiting == 0
        text = httpx.get(f"{front.base_url}/metrics").text
        assert metric(text, "fleetlm_num_requests_pending") == 0  # its admission slot is free again
        served = "tiny" if model == "router/r" else ""  # the agent had not answered yet
        assert metric(text, "fleetlm_model_requests_total", model=model, served_by=served, status=499) == 1
    finally:
        restore()
        srv.should_exit = True
        thread.join(10)
