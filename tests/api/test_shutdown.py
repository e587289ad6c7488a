"""Graceful shutdown of `fleet serve`: on SIGTERM a stream in flight still completes, then the
process exits. Its start-up stages are logged as they go."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.api.conftest import free_port, wait_healthy


def test_sigterm_lets_the_running_stream_finish(tiny_gemma):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "fleetlm.cli", "serve", "--model", str(tiny_gemma),
                             "--port", str(port), "--dtype", "float32", "--no-embeddings"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(url, timeout=120)
        body = {"model": tiny_gemma.name, "prompt": "go", "max_tokens": 400, "stream": True, "ignore_eos": True,
                "stream_options": {"include_usage": True}}
        usage, done, signalled = None, False, False
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as resp:
            for line in resp.iter_lines():
                if not signalled and line.startswith("data: {"):
                    proc.send_signal(signal.SIGTERM)  # mid-stream
                    signalled = True
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {") and json.loads(line[6:]).get("usage"):
                    usage = json.loads(line[6:])["usage"]
        assert signalled and done
        assert usage["completion_tokens"] == 400  # finished, not cut off
        assert proc.wait(60) in (0, -signal.SIGTERM)
        log = proc.stdout.read()
        assert "Application shutdown complete" in log
        # the start-up stages were shown as they went, each with its time, before serving
        stages = [line for line in log.splitlines() if "fleetlm.server" in line]
        assert any("engine: loading" in line and line.endswith("...") for line in stages), log[:2000]
        assert any(re.search(r"engine: loading .*: done in \d+\.\d s", line) for line in stages)
        assert any(re.search(r"fleet: .*: done in \d+\.\d s", line) for line in stages)
        assert log.index("fleet: adapters") < log.index("Uvicorn running")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_under_load_finishes_what_was_accepted_and_exits_0(tiny_gemma):
    """12 clients send streamed and whole requests back to back; SIGTERM lands among them
    (the clients start no new request from 0.1 s before it, so every request was
    accepted before it). Every one finishes whole, a stream to [DONE]; the process exits 0
    within its shutdown timeout."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "fleetlm.cli", "serve", "--model", str(tiny_gemma),
                             "--port", str(port), "--dtype", "float32", "--no-embeddings"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done: list[tuple[float, float]] = []  # (start, end) of each request answered in full
    stopping = threading.Event()

    def client(i: int) -> None:
        # lengths differ, so the clients do not finish (and start anew) in step
        body = {"model": tiny_gemma.name, "prompt": f"load {i}", "max_tokens": 60 + 13 * i, "ignore_eos": True,
                "n": 3}
        while not stopping.is_set():
            start = time.monotonic()
            if i % 2:
                with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as resp:
                    lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
                assert resp.status_code == 200 and lines[-1] == "data: [DONE]" and '"length"' in lines[-2]
            else:
                resp = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
                assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 3 * body["max_tokens"]
            done.append((start, time.monotonic()))

    try:
        wait_healthy(url, timeout=120)
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(client, i) for i in range(12)]
            while len(done) < 24:
                time.sleep(0.01)
            stopping.set()
            time.sleep(0.1)  # what was started is connected and sent by now (on loopback, in ms)
            t_signal = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            for f in futures:
                f.result(timeout=60)  # no client failed: an assertion or a broken stream would raise here
        assert code == 0, proc.stdout.read()[-3000:]
        assert time.monotonic() - t_signal < 30 + 15  # the default shutdown timeout, and the engine's stop
        in_flight = [(s, e) for s, e in done if s < t_signal < e]
        assert len(in_flight) >= 3, in_flight  # requests were running at SIGTERM, and finished whole
    finally:
        if proc.poll() is None:
            proc.kill()
