"""A real fleetlm server in this process, on 127.0.0.1, over the embedded gemma-3-270m with
LoRA on (the benchmarks' shared set-up; not a benchmark itself)."""

from __future__ import annotations

import socket
import threading
import time

import httpx


def serve_gemma(*, fleet=None, max_model_len: int = 4096, **server_kw):
    """(base URL ending in /v1, the uvicorn Server, the AsyncLLM) once /health answers.
    `fleet`: a FleetFile; `server_kw`: ServerConfig fields. Stop with `server.should_exit = True`."""
    import uvicorn

    from fleetlm.api.server import app_for_engine
    from fleetlm.config import EngineConfig, ServerConfig
    from fleetlm.engine.async_engine import AsyncLLM
    from fleetlm.models.embedded import ensure_default_model

    llm = AsyncLLM(EngineConfig(model=str(ensure_default_model()), max_model_len=max_model_len, enable_lora=True))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ServerConfig(port=port, **server_kw)
    app = app_for_engine(llm, model_id="gemma-3-270m", config=config, fleet_file=fleet)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return f"{base}/v1", server, llm
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def stop_group(proc, timeout: float = 30) -> None:
    """SIGTERM to a server subprocess's process group (started with start_new_session), then
    SIGKILL if it has not exited within `timeout`."""
    import os
    import signal
    import subprocess

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
