"""A real fleetlm server on 127.0.0.1 (uvicorn in a thread, real HTTP) over a tiny model."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from fleetlm.api.server import app_for_engine
from fleetlm.config import EngineConfig, ServerConfig
from fleetlm.engine.async_engine import AsyncLLM
from fleetlm.fleet_toml import FleetFile


@dataclass
class RunningServer:
    base_url: str
    llm: AsyncLLM
    model: str
    api_key: str | None

    def client(self, **kw):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key or "unused", max_retries=0, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_folder, *, model_id: str = "tiny", embedder=None, upstreams=(), routers=(), pools=(),
                 tool_agents=(), programs=(), tenants=None, engine_kw: dict | None = None, **server_kw):
    """engine_kw: EngineConfig fields (default: fp32, a 256-token context); server_kw:
    ServerConfig fields. `model_id`: the local model's public id; `tenants`: a TenantsConfig."""
    import uvicorn

    llm = AsyncLLM(EngineConfig(model=str(model_folder), **{"dtype": "float32", "max_model_len": 256,
                                                            **(engine_kw or {})}))
    config = ServerConfig(port=free_port(), **server_kw)
    fleet = FleetFile(list(upstreams), list(routers), list(pools), tool_agents=list(tool_agents),
                      programs=list(programs), tenants=tenants)
    app = app_for_engine(llm, model_id=model_id, config=config, fleet_file=fleet, embedder=embedder)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=config.port, log_level="warning",
                                           h11_max_incomplete_event_size=config.max_request_head_bytes))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{config.port}"
    wait_healthy(base, timeout=30)
    return RunningServer(base, llm, model_id, config.api_key), server, thread


def start_gemma_server(**engine_kw):
    """start_server on the real embedded gemma-3-270m (its default dtype), as `gemma-3-270m`."""
    from fleetlm.models.embedded import ensure_default_model

    return start_server(ensure_default_model(), model_id="gemma-3-270m", engine_kw={"dtype": "auto", **engine_kw})


def fleet_serve(model_folder, port: int, *args: str, **popen_kw):
    """`fleet serve` in a subprocess on 127.0.0.1:`port` over a tiny model (fp32, no
    embeddings; `model_folder` None: the models of a `--config` in `args`), with more
    command-line `args`."""
    import subprocess
    import sys

    model = ["--model", str(model_folder), "--dtype", "float32"] if model_folder is not None else []
    return subprocess.Popen([sys.executable, "-m", "fleetlm.cli", "serve", *model, "--port",
                             str(port), "--no-embeddings", *args],
                            **({"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} | popen_kw))


def stop_process(proc, timeout: float = 30, *, group: bool = False) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL if it has not exited within `timeout`;
    `group`: to its whole process group (a process started with start_new_session)."""
    import os
    import signal
    import subprocess

    send = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    send(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)


def wait_healthy(base_url: str, *, timeout: float) -> None:
    """Poll GET /health until it answers 200; RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{base_url} did not become healthy in {timeout} s")


@pytest.fixture(scope="session")
def tiny_gemma_2k(tiny_gemma, tmp_path_factory):
    """The tiny Gemma with a 2048-token context: tool lists and agent prompts in a byte-level
    tokenizer are long. (RoPE positions past the tiny config's 512 are as valid as the first.)"""
    folder = tmp_path_factory.mktemp("tiny-gemma-2k")
    shutil.copytree(tiny_gemma, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    return folder


@pytest.fixture(scope="module")
def server(tiny_gemma):
    running, srv, thread = start_server(tiny_gemma, max_pending_requests=64)
    yield running
    srv.should_exit = True
    thread.join(10)
