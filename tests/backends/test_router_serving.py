"""router/<name> over two upstream fleetlm servers on 127.0.0.1: the policy's choice serves,
the response names it, and when a server stops mid-test requests fall back with none lost."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest

from fleetlm.config import RouterConfig, UpstreamConfig
from tests.api.conftest import start_server


@pytest.fixture()
def fleet(tiny_gemma):
    a, a_srv, a_thread = start_server(tiny_gemma)
    b, b_srv, b_thread = start_server(tiny_gemma)
    ups = [UpstreamConfig(name="a", base_url=f"{a.base_url}/v1", models=["tiny"], connect_timeout_s=1),
           UpstreamConfig(name="b", base_url=f"{b.base_url}/v1", models=["tiny"], connect_timeout_s=1)]
    routers = [RouterConfig(name="chain", candidates={"A": "upstream/a/tiny", "B": "upstream/b/tiny"},
                            order=["A", "B"], cooldown_s=60, default=True)]
    front, f_srv, f_thread = start_server(tiny_gemma, upstreams=ups, routers=routers)
    servers = {"a": (a_srv, a_thread), "b": (b_srv, b_thread), "front": (f_srv, f_thread)}
    yield front, servers
    for srv, thread in servers.values():
        srv.should_exit = True
        thread.join(10)


def ask(front, model="router/chain", stream=False):
    body = {"model": model, "prompt": "route me", "max_tokens": 4, "stream": stream}
    with httpx.Client(timeout=30) as c:
        r = c.post(f"{front.base_url}/v1/completions", json=body)
        return r.status_code, r.headers.get("x-fleetlm-served-by"), r.text


def test_router_serves_with_the_policys_choice_and_names_it(fleet):
    front, _ = fleet
    client = front.client()
    ids = [m.id for m in client.models.list().data]
    assert {"router/chain", "router/auto", "compound/auto"} <= set(ids)
    assert client.completions.create(model="compound/auto", prompt="hi", max_tokens=3).model == "upstream/a/tiny"
    raw = client.completions.with_raw_response.create(model="router/auto", prompt="hi", max_tokens=3)
    assert raw.headers["x-fleetlm-served-by"] == "upstream/a/tiny"
    assert raw.parse().model == "upstream/a/tiny"
    status, served, _ = ask(front, stream=True)
    assert status == 200 and served == "upstream/a/tiny"
    metrics = httpx.get(f"{front.base_url}/metrics").text
    assert 'fleetlm_routed_requests_total{model="upstream/a/tiny",router="router/auto"} 1.0' in metrics


def test_stopping_a_server_mid_test_loses_no_request(fleet):
    front, servers = fleet
    results = []
    with cf.ThreadPoolExecutor(8) as pool:
        first = [pool.submit(ask, front) for _ in range(8)]
        results += [f.result() for f in first]
        srv, thread = servers["a"]
        srv.should_exit = True  # server A goes away while requests keep coming
        thread.join(10)
        later = [pool.submit(ask, front, "router/chain", i % 2 == 0) for i in range(16)]
        results += [f.result() for f in later]
    assert all(status == 200 for status, _, _ in results), [r for r in results if r[0] != 200]
    assert {served for _, served, _ in results[:8]} == {"upstream/a/tiny"}
    assert {served for _, served, _ in results[8:]} == {"upstream/b/tiny"}
    # direct use of the dead upstream is an honest 502, not a hang
    assert ask(front, "upstream/a/tiny")[0] == 502


def test_a_trained_router_sends_each_query_where_its_policy_says(tiny_gemma, tmp_path):
    """A router trained on synthetic outcomes (model A right on arithmetic, B on poems) routes
    through the server to the matching upstream."""
    from fleetlm.compound.router.data import RoutingExample
    from fleetlm.compound.router.router import train_router

    math = [f"What is {a} plus {b}? Compute the sum." for a in range(3, 23) for b in (4, 9)]
    poems = [f"Write a short poem about the {w} at dusk." for w in
             "sea moon river forest mountain garden city desert rain snow wind fire stars clouds field "
             "lake bridge tower road valley".split() for _ in (0, 1)]
    examples = [RoutingExample(p, {"A": 1.0, "B": 0.0}, {"A": 0.001, "B": 0.001}) for p in math]
    examples += [RoutingExample(p, {"A": 0.0, "B": 1.0}, {"A": 0.001, "B": 0.001}) for p in poems]
    train_router(examples, policy="knn", params={"k": 5}).save(tmp_path / "r")

    a, a_srv, a_thread = start_server(tiny_gemma)
    b, b_srv, b_thread = start_server(tiny_gemma)
    ups = [UpstreamConfig(name="a", base_url=f"{a.base_url}/v1", models=["tiny"]),
           UpstreamConfig(name="b", base_url=f"{b.base_url}/v1", models=["tiny"])]
    routers = [RouterConfig(name="learned", candidates={"A": "upstream/a/tiny", "B": "upstream/b/tiny"},
                            path=str(tmp_path / "r"))]
    front, f_srv, f_thread = start_server(tiny_gemma, upstreams=ups, routers=routers)
    try:
        client = front.client()
        for prompt, want in [("What is 41 plus 7? Compute the sum.", "upstream/a/tiny"),
                             ("Write a short poem about the ocean at dusk.", "upstream/b/tiny")]:
            raw = client.chat.completions.with_raw_response.create(
                model="router/learned", max_tokens=3, messages=[{"role": "user", "content": prompt}])
            assert raw.headers["x-fleetlm-served-by"] == want, prompt
    finally:
        for srv, thread in ((f_srv, f_thread), (a_srv, a_thread), (b_srv, b_thread)):
            srv.should_exit = True
            thread.join(10)
