"""Build and run the server: engine + optional embedder + app, under uvicorn.

Graceful shutdown: on SIGINT/SIGTERM uvicorn stops accepting connections and gives
in-flight requests `shutdown_timeout_s` to finish; the app's lifespan then aborts what is
left in the engine and stops its thread."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from fleetlm.config import EngineConfig, ServerConfig

log = logging.getLogger("fleetlm.server")


def model_id_for(engine_config: EngineConfig) -> str:
    path = Path(engine_config.model)
    return path.name if path.is_dir() else engine_config.model


def build_app(engine_config: EngineConfig, server_config: ServerConfig, fleet_file=None):
    from fleetlm.api.app import create_app
    from fleetlm.engine.async_engine import AsyncLLM

    llm = AsyncLLM(engine_config)
    embedder = None
    if server_config.enable_embeddings:
        try:
            from fleetlm.models.embeddings import Embedder

            embedder = Embedder()
        except Exception as exc:  # the server still serves generation without it
            log.warning("embeddings disabled: %s", exc)
    from fleetlm.api.serving import response_format_to_structured as structured

    # The grammar compiler's tokenizer table takes a few seconds for a 262k vocabulary: build
    # it now, off the request path, so the first structured request does not stall the loop.
    threading.Thread(target=lambda: llm.engine.grammar().prepare(), name="fleetlm-grammar-prep",
                     daemon=True).start()
    model_id = server_config.served_model_name or model_id_for(engine_config)
    return create_app(server_config, llm, model_id=model_id, embedder=embedder, structured=structured,
                      upstreams=fleet_file.upstreams if fleet_file else (),
                      routers=fleet_file.routers if fleet_file else (),
                      pools=fleet_file.pools if fleet_file else (),
                      tool_agents=fleet_file.tool_agents if fleet_file else ())


def serve(engine_config: EngineConfig, server_config: ServerConfig, fleet_file=None) -> None:
    import uvicorn

    app = build_app(engine_config, server_config, fleet_file)
    uvicorn.run(app, host=server_config.host, port=server_config.port, log_level="info",
                timeout_graceful_shutdown=server_config.shutdown_timeout_s)
