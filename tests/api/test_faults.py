"""Faults end in bounded time with a clear error or a clean finish, free what they held, and
leave /health truthful: an upstream that never answers, breaks off or streams forever, a
thousand streams dropped after their first chunk, a client that never reads, an engine
thread that dies."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from fleetlm.api.server import app_for_engine
from fleetlm.config import EngineConfig, RouterConfig, ServerConfig, UpstreamConfig
from fleetlm.engine.async_engine import AsyncLLM
from tests.api.conftest import start_server, wait_healthy

CHUNK = ('data: {"id":"x","object":"text_completion","created":0,"model":"m","choices":'
         '[{"index":0,"text":"half","logprobs":null,"finish_reason":null}]}\n\n')


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and then, per `mode`, says nothing
    ("silent"), sends the headers and one SSE chunk of a stream and closes ("breaks"), or
    sends the headers and then a chunk every 10 ms for as long as the socket takes them
    ("forever")."""

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
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n" + f"{len(CHUNK):x}\r\n{CHUNK}\r\n".encode())
                conn.close()
            elif self.mode == "forever":
                threading.Thread(target=self._forever, args=(conn,), daemon=True).start()

    def _forever(self, conn):
        conn.recv(65536)
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            while True:
                conn.sendall(f"{len(CHUNK):x}\r\n{CHUNK}\r\n".encode())
                time.sleep(0.01)
        except OSError:  # the client went away
            conn.close()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture(scope="module")
def faulty(tiny_gemma):
    silent, breaks, forever = SilentServer("silent"), SilentServer("breaks"), SilentServer("forever")
    ups = [UpstreamConfig(name="silent", base_url=f"http://127.0.0.1:{silent.port}/v1", models=["m"], timeout_s=1,
                          connect_timeout_s=1),
           UpstreamConfig(name="breaks", base_url=f"http://127.0.0.1:{breaks.port}/v1", models=["m"], timeout_s=5),
           UpstreamConfig(name="forever", base_url=f"http://127.0.0.1:{forever.port}/v1", models=["m"], timeout_s=5,
                          max_stream_s=2)]
    routers = [RouterConfig(name="r", candidates={"s": "upstream/silent/m", "local": "tiny"}, order=["s", "local"],
                            cooldown_s=60)]
    running, srv, thread = start_server(tiny_gemma, upstreams=ups, routers=routers, max_pending_requests=2000)
    yield running
    srv.should_exit = True
    thread.join(10)
    silent.close()
    breaks.close()
    forever.close()


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


def test_an_upstream_that_streams_forever_is_cut_off_at_max_stream_s(faulty):
    """httpx's timeouts bound each wait between chunks, never the total: an upstream that
    keeps sending would hold the request forever without max_stream_s (2 s here)."""
    body = {"model": "upstream/forever/m", "prompt": "x", "max_tokens": 5}
    t0 = time.monotonic()
    with httpx.stream("POST", f"{faulty.base_url}/v1/completions", timeout=30, json={**body, "stream": True}) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert resp.status_code == 200 and len(lines) > 10 and '"half"' in lines[0]  # it streamed, then:
    err = json.loads(lines[-2][6:])["error"]
    assert err["code"] == "upstream_timeout" and "max_stream_s" in err["message"], err
    assert lines[-1] == "data: [DONE]"
    assert time.monotonic() - t0 < 20
    # not streamed, the body never ends: a 504 at the same bound
    t0 = time.monotonic()
    whole = httpx.post(f"{faulty.base_url}/v1/completions", timeout=30, json=body)
    assert whole.status_code == 504 and whole.json()["error"]["code"] == "upstream_timeout", whole.text[:300]
    assert time.monotonic() - t0 < 20


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


def start_with_small_send_buffers(model_folder, **server_kw):
    """A server as conftest.start_server starts it, on a listening socket whose connections
    get 4 KiB send buffers (no autotuning up to 4 MiB): a stalled client blocks the server's
    sends after some 100 KB of answer rather than 4 MB, seconds rather than minutes here."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # accepted sockets inherit it
    sock.bind(("127.0.0.1", 0))
    llm = AsyncLLM(EngineConfig(model=str(model_folder), dtype="float32", max_model_len=2048))
    config = ServerConfig(port=sock.getsockname()[1], **server_kw)
    server = uvicorn.Server(uvicorn.Config(app_for_engine(llm, model_id="tiny", config=config), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{config.port}"
    wait_healthy(base, timeout=30)
    return base, llm, server, thread


def test_a_client_that_never_reads_is_dropped_and_frees_what_it_held(tiny_gemma_2k):
    """A long streamed answer to a client that sends its request and then reads nothing:
    after send_timeout_s (1 s here) of a blocked send the server ends the response as a
    disconnect (recorded as 499), aborts the engine rows (long before they would finish) and
    frees their KV blocks and the admission slot, and serves others all along."""
    base, llm, srv, thread = start_with_small_send_buffers(tiny_gemma_2k, send_timeout_s=1)
    body = json.dumps({"model": "tiny", "prompt": "never read", "max_tokens": 2000, "ignore_eos": True, "n": 8,
                       "logprobs": 20, "stream": True}).encode()  # 8 MB of SSE, over 100 s to generate here
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stalled.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        stalled.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n" % len(body) + body)
        t0 = time.monotonic()
        while llm.stats().running == 0 and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        assert llm.stats().running > 0  # it started
        other = httpx.post(f"{base}/v1/completions", timeout=60, json={"model": "tiny", "prompt": "hi", "max_tokens": 3})
        assert other.status_code == 200  # others are served all along
        dropped = 'fleetlm_model_requests_total{model="tiny",served_by="tiny",status="499"} 1.0'
        while dropped not in httpx.get(f"{base}/metrics").text and time.monotonic() - t0 < 60:
            time.sleep(0.1)
        metrics = httpx.get(f"{base}/metrics").text
        assert dropped in metrics, [m for m in metrics.splitlines() if "model_requests_total" in m]
        assert "fleetlm_num_requests_pending 0.0" in metrics  # its admission slot is back
        while (llm.stats().running or llm.stats().streams) and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        assert llm.stats().running == 0 and llm.stats().streams == 0 and not llm.engine.requests
        assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks
    finally:
        stalled.close()
        srv.should_exit = True
        thread.join(10)
