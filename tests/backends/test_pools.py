"""One model id over two upstream fleetlm servers on 127.0.0.1 as two pools: each prompt-
length bucket goes to its pool, and when one pool's server stops its bucket falls back to
the other with no request lost."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest

from fleetlm.backends.pools import bucket_index, estimate_prompt_tokens
from fleetlm.config import PoolConfig, UpstreamConfig
from tests.api.conftest import RunningServer, free_port, start_server, wait_healthy

SHORT = "hi there"  # 8 chars -> 2 estimated tokens: bucket 0
LONG = "a longer prompt that clearly belongs to the second bucket " * 2  # ~116 chars -> 29 tokens


def start_front(model_folder, *, upstreams, pools):
    """tests.api.conftest.start_server, plus `pools` (which that helper does not pass on)."""
    import threading

    import uvicorn

    from fleetlm.api.server import app_for_engine
    from fleetlm.config import EngineConfig, ServerConfig
    from fleetlm.engine.async_engine import AsyncLLM
    from fleetlm.fleet_toml import FleetFile

    llm = AsyncLLM(EngineConfig(model=str(model_folder), dtype="float32", max_model_len=256))
    config = ServerConfig(port=free_port())
    app = app_for_engine(llm, model_id="tiny", config=config, fleet_file=FleetFile(list(upstreams), [], list(pools)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=config.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{config.port}"
    wait_healthy(base, timeout=30)
    return RunningServer(base, llm, "tiny", None), server, thread


@pytest.fixture()
def fleet(tiny_gemma):
    a, a_srv, a_thread = start_server(tiny_gemma)
    b, b_srv, b_thread = start_server(tiny_gemma)
    ups = [UpstreamConfig(name="a", base_url=f"{a.base_url}/v1", models=["tiny"], connect_timeout_s=1),
           UpstreamConfig(name="b", base_url=f"{b.base_url}/v1", models=["tiny"], connect_timeout_s=1)]
    pools = [PoolConfig(model="tiny-pooled", members={"small": "upstream/a/tiny", "big": "upstream/b/tiny"},
                        prompt_edges=[16], buckets=[["small"], ["big"]], cooldown_s=60)]
    front, f_srv, f_thread = start_front(tiny_gemma, upstreams=ups, pools=pools)
    servers = {"a": (a_srv, a_thread), "b": (b_srv, b_thread), "front": (f_srv, f_thread)}
    yield front, servers
    for srv, thread in servers.values():
        srv.should_exit = True
        thread.join(10)


def ask(front, prompt, *, chat=False, stream=False):
    if chat:
        path, body = "chat/completions", {"messages": [{"role": "user", "content": prompt}]}
    else:
        path, body = "completions", {"prompt": prompt}
    body.update(model="tiny-pooled", max_tokens=3, stream=stream)
    with httpx.Client(timeout=30) as c:
        r = c.post(f"{front.base_url}/v1/{path}", json=body)
        return r.status_code, r.headers.get("x-fleetlm-served-by")


def test_prompt_length_buckets():
    class Msg:
        def __init__(self, t):
            self.t = t

        def text(self):
            return self.t

    class Chat:
        messages = [Msg("x" * 40), Msg("y" * 40)]

    class Comp:
        def __init__(self, p):
            self.prompt = p

    assert estimate_prompt_tokens(Chat()) == 20  # every message counts, not only the last
    assert estimate_prompt_tokens(Comp([1, 2, 3])) == 3  # token ids are exact
    assert estimate_prompt_tokens(Comp("z" * 100), chars_per_token=2) == 50
    assert [bucket_index(t, [16, 64]) for t in (0, 15, 16, 63, 64, 10_000)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="buckets"):
        PoolConfig(model="m", members={"a": "x"}, prompt_edges=[16], buckets=[["a"]])
    with pytest.raises(ValueError, match="unknown"):
        PoolConfig(model="m", members={"a": "x"}, prompt_edges=[16], buckets=[["a"], ["b"]])


def test_each_bucket_goes_to_its_pool_and_falls_back_when_one_stops(fleet):
    front, servers = fleet
    ids = [m.id for m in front.client().models.list().data]
    assert "tiny-pooled" in ids
    asks = [(p, chat, stream) for p in (SHORT, LONG) for chat in (False, True) for stream in (False, True)]
    with cf.ThreadPoolExecutor(8) as pool:
        before = list(pool.map(lambda a: (a[0], *ask(front, a[0], chat=a[1], stream=a[2])), asks * 2))
    assert all(status == 200 for _, status, _ in before), before
    assert {served for p, _, served in before if p == SHORT} == {"upstream/a/tiny"}
    assert {served for p, _, served in before if p == LONG} == {"upstream/b/tiny"}

    srv, thread = servers["b"]  # the long-prompt pool goes away
    srv.should_exit = True
    thread.join(10)
    with cf.ThreadPoolExecutor(8) as pool:
        after = list(pool.map(lambda a: (a[0], *ask(front, a[0], chat=a[1], stream=a[2])), asks * 2))
    assert all(status == 200 for _, status, _ in after), after  # no request lost
    assert {served for _, _, served in after} == {"upstream/a/tiny"}
    metrics = httpx.get(f"{front.base_url}/metrics").text
    assert 'fleetlm_routed_requests_total{model="upstream/b/tiny",router="tiny-pooled"}' in metrics
