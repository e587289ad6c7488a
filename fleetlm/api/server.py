"""Build and run the server: engine + optional embedder + app, under uvicorn.

Graceful shutdown: on SIGINT/SIGTERM uvicorn stops accepting connections and gives
in-flight requests `shutdown_timeout_s` to finish; the app's lifespan then aborts what is
left in the engine and stops its thread."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from fleetlm.config import EngineConfig, FleetFile, ServerConfig

log = logging.getLogger("fleetlm.server")


def model_id_for(engine_config: EngineConfig) -> str:
    path = Path(engine_config.model)
    return path.name if path.is_dir() else engine_config.model


def build_app(engine_config: EngineConfig, server_config: ServerConfig, fleet_file: FleetFile | None = None):
    from fleetlm.engine.async_engine import AsyncLLM

    llm = AsyncLLM(engine_config)
    embedder = None
    if server_config.enable_embeddings:
        try:
            from fleetlm.models.embeddings import Embedder

            embedder = Embedder()
        except Exception as exc:  # the server still serves generation without it
            log.warning("embeddings disabled: %s", exc)
    # The grammar compiler's tokenizer table takes a few seconds for a 262k vocabulary: build
    # it now, off the request path, so the first structured request does not stall the loop.
    threading.Thread(target=lambda: llm.engine.grammar().prepare(), name="fleetlm-grammar-prep",
                     daemon=True).start()
    model_id = server_config.served_model_name or model_id_for(engine_config)
    return app_for_engine(llm, model_id=model_id, config=server_config, fleet_file=fleet_file, embedder=embedder)


def app_for_engine(llm, *, model_id: str, config: ServerConfig, fleet_file: FleetFile | None = None, embedder=None):
    """The app around an already-started engine (an AsyncLLM served as `model_id`)."""
    from fleetlm.api.app import create_app
    from fleetlm.catalog import build

    fleet = build(llm, model_id=model_id, server=config, fleet=fleet_file, embedder=embedder)
    return create_app(config, fleet, embedder=embedder)


def serve(engine_config: EngineConfig, server_config: ServerConfig, fleet_file=None) -> None:
    import uvicorn

    app = build_app(engine_config, server_config, fleet_file)
    uvicorn.run(app, host=server_config.host, port=server_config.port, log_level="info",
                timeout_graceful_shutdown=server_config.shutdown_timeout_s)
