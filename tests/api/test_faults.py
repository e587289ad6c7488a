"""Faults end in bounded time with a clear error or a clean finish, free what they held, and
leave /health truthful: an upstream that never answers or breaks off, a thousand streams
dropped after their first chunk, an engine thread that dies."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from fleetlm.config import RouterConfig, UpstreamConfig
from tests.api.conftest import start_server


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and then, per `mode`, says nothing
    ("silent"), or sends the headers and one SSE chunk of a stream and closes ("breaks")."""

    def __init__(self, mode: str):
        self.mode, self.sock = mode, socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.mode == "breaks":
                conn.recv(65536)
                chunk = ('data: {"id":"x","object":"text_completion","created":0,"model":"m","choices":'
                         '[{"index":0,"text":"half","logprobs":null,"finish_reason":null}]}\n\n')
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n"
                             + f"{len(chunk):x}\r\n{chunk}\r\n".encode())
                conn.close()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture(scope="module")
def faulty(tiny_gemma):
    silent, breaks = SilentServer("silent"), SilentServer("breaks")
    ups = [UpstreamConfig(name="silent", base_url=f"http://127.0.0.1:{silent.port}/v1", models=["m"], timeout_s=1,
                          connect_timeout_s=1),
           UpstreamConfig(name="breaks", base_url=f"http://127.0.0.1:{breaks.port}/v1", models=["m"], timeout_s=5)]
    routers = [RouterConfig(name="r", candidates={"s": "upstream/silent/m", "local": "tiny"}, order=["s", "local"],
                            cooldown_s=60)]
    running, srv, thread = start_server(tiny_gemma, upstreams=ups, routers=routers, max_pending_requests=2000)
    yield running
    srv.should_exit = True
    thread.join(10)
    silent.close()
    breaks.close()


def test_an_upstream_that_never_answers_is_a_504_in_bounded_time(faulty):
    t0 = time.monotonic()
    resp = httpx.post(f"{faulty.base_url}/v1/completions", timeout=30,
                      json={"model": "upstream/silent/m", "prompt": "x"})
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - t0 < 5  # its 1 s timeout, not forever
    # through a router, the silent upstream is passed over and the local model answers
    routed = httpx.post(f"{faulty.base_url}/v1/completions", timeout=30,
                        json={"model": "router/r", "prompt": "x", "max_tokens": 2})
    assert routed.status_code == 200 and routed.headers["x-fleetlm-served-by"] == "tiny"


def test_an_upstream_that_dies_mid_stream_ends_the_stream_with_an_in_band_error(faulty):
    with httpx.stream("POST", f"{faulty.base_url}/v1/completions", timeout=30,
                      json={"model": "upstream/breaks/m", "prompt": "x", "stream": True}) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert resp.status_code == 200 and '"half"' in lines[0]
    assert '"error"' in lines[-2] and lines[-1] == "data: [DONE]"  # a clean end, with the reason


def test_a_thousand_streams_dropped_after_their_first_chunk_free_everything(faulty):
    llm = faulty.llm
    total = llm.engine.kv.num_blocks

    def drop(i):
        with httpx.stream("POST", f"{faulty.base_url}/v1/completions", timeout=60,
                          json={"model": "tiny", "prompt": f"drop {i}", "max_tokens": 200, "stream": True,
                                "ignore_eos": True}) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    return resp.status_code

    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(drop, range(1000)))
    assert statuses == [200] * 1000
    deadline = time.monotonic() + 30
    while (llm.stats().running or llm.stats().waiting or llm.engine.kv.num_free_blocks != total) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert llm.stats().running == 0 and llm.stats().waiting == 0 and llm.stats().streams == 0
    assert llm.engine.kv.num_free_blocks == total and not llm.engine.requests
    metrics = httpx.get(f"{faulty.base_url}/metrics").text
    assert "fleetlm_num_requests_pending 0.0" in metrics  # every admission slot given back
    assert time.monotonic() - t0 < 120


def test_a_dead_engine_makes_health_503_and_requests_503(tiny_gemma):
    running, srv, thread = start_server(tiny_gemma)
    try:
        def broken_step():
            raise RuntimeError("the engine thread died")

        running.llm.engine.step = broken_step
        resp = httpx.post(f"{running.base_url}/v1/completions", timeout=30,
                          json={"model": "tiny", "prompt": "x", "max_tokens": 2})
        assert resp.status_code == 503 and "engine" in resp.json()["error"]["message"]
        health = httpx.get(f"{running.base_url}/health")
        assert health.status_code == 503 and "the engine thread died" in health.json()["error"]["message"]
        again = httpx.post(f"{running.base_url}/v1/completions", timeout=30,
                           json={"model": "tiny", "prompt": "x", "max_tokens": 2})
        assert again.status_code == 503  # refused at once, not hung
    finally:
        srv.should_exit = True
        thread.join(10)
