"""upstream/<name>/<model> against a second, real fleetlm server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import httpx
import pytest

from fleetlm.config import UpstreamConfig
from fleetlm.fleet_toml import load_fleet_toml
from tests.api.conftest import free_port, start_server


@pytest.fixture(scope="module")
def pair(tiny_gemma):
    peer, peer_srv, peer_thread = start_server(tiny_gemma)
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    ups = [UpstreamConfig(name="peer", base_url=f"{peer.base_url}/v1", models=["tiny"],
                          price_input_per_mtok=0.1, price_output_per_mtok=0.2),
           UpstreamConfig(name="down", base_url=dead, models=["tiny"], connect_timeout_s=1)]
    front, front_srv, front_thread = start_server(tiny_gemma, upstreams=ups)
    yield front, peer
    for srv, thread in ((front_srv, front_thread), (peer_srv, peer_thread)):
        srv.should_exit = True
        thread.join(10)


def test_models_lists_upstreams_with_prices(pair):
    front, _ = pair
    cards = {m.id: m for m in front.client().models.list().data}
    assert {"tiny", "upstream/peer/tiny", "upstream/down/tiny"} <= set(cards)
    assert cards["upstream/peer/tiny"].model_extra["pricing"]["output_per_mtok"] == 0.2


@pytest.mark.parametrize("stream", [False, True])
def test_proxied_text_equals_the_upstream_itself(pair, stream):
    front, peer = pair
    kw = dict(prompt="hello upstream", max_tokens=12, temperature=0.8, seed=11, extra_body={"ignore_eos": True})
    direct = peer.client().completions.create(model="tiny", **kw)
    if stream:
        chunks = list(front.client().completions.create(model="upstream/peer/tiny", stream=True, **kw))
        assert all(c.model == "upstream/peer/tiny" for c in chunks)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    else:
        r = front.client().completions.create(model="upstream/peer/tiny", **kw)
        assert r.model == "upstream/peer/tiny"
        assert r.usage.completion_tokens == 12
        text = r.choices[0].text
    assert text == direct.choices[0].text


def test_chat_through_the_upstream(pair):
    front, _ = pair
    r = front.client().chat.completions.create(model="upstream/peer/tiny", max_tokens=5,
                                               messages=[{"role": "user", "content": "hi"}])
    assert r.model == "upstream/peer/tiny" and r.choices[0].message.role == "assistant"


def test_upstream_errors_keep_their_status_and_a_dead_upstream_is_502(pair):
    front, _ = pair
    bad = httpx.post(f"{front.base_url}/v1/completions", timeout=30,
                     json={"model": "upstream/peer/tiny", "prompt": "y" * 400})
    assert bad.status_code == 400 and "256" in bad.json()["error"]["message"]
    down = httpx.post(f"{front.base_url}/v1/completions", timeout=30,
                      json={"model": "upstream/down/tiny", "prompt": "x"})
    assert down.status_code == 502 and down.json()["error"]["code"] == "upstream_error"
    ok = httpx.post(f"{front.base_url}/v1/completions", timeout=30,
                    json={"model": "tiny", "prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200


def test_fleet_toml_is_validated(tmp_path):
    good = tmp_path / "fleet.toml"
    good.write_text('[[upstream]]\nname = "a"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["m"]\n')
    assert load_fleet_toml(str(good)).upstreams[0].models == ["m"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[upstream]]\nname = "a"\nbase_url = "http://x/v1"\nmodels = ["m"]\nbase_ulr = "typo"\n')
    with pytest.raises(ValueError, match="base_ulr"):
        load_fleet_toml(str(bad))


def test_usage_and_cost_are_recorded_for_streams_too(pair):
    front, _ = pair
    client = front.client()
    client.completions.create(model="upstream/peer/tiny", prompt="cost me", max_tokens=5,
                              extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model="upstream/peer/tiny", prompt="cost me", max_tokens=5,
                                            stream=True, extra_body={"ignore_eos": True}))
    assert all(c.usage is None for c in chunks)  # the client did not ask: no usage chunk leaks
    metrics = httpx.get(f"{front.base_url}/metrics").text
    line = [m for m in metrics.splitlines()
            if m.startswith('fleetlm_model_tokens_total{kind="completion",model="upstream/peer/tiny"}')]
    assert line and float(line[0].split()[-1]) >= 10.0
    cost = [m for m in metrics.splitlines() if m.startswith('fleetlm_cost_usd_total{model="upstream/peer/tiny"}')]
    assert cost and float(cost[0].split()[-1]) > 0
