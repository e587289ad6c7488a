"""Build and run the server: engine + optional embedder + app, under uvicorn.

Graceful shutdown: on SIGINT/SIGTERM uvicorn stops accepting connections and gives
in-flight requests `shutdown_timeout_s` to finish; the app's lifespan then aborts what is
left in the engine and stops its thread. After SIGTERM the process exits with status 0."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fleetlm.catalog import local_base
from fleetlm.config import EngineConfig, ServerConfig
from fleetlm.deploy_config import ModelConfig
from fleetlm.fleet_toml import FleetFile
from fleetlm.openai.chunks import Pricing

log = logging.getLogger("fleetlm.server")


def model_id_for(engine_config: EngineConfig) -> str:
    path = Path(engine_config.model)
    return path.name if path.is_dir() else engine_config.model


@contextmanager
def stage(what: str) -> Iterator[None]:
    """Log a start-up stage as it begins and when it is done, with its time, so a slow first
    start (a model conversion, a kernel build) does not look like a hang."""
    log.info("%s ...", what)
    t0 = time.monotonic()
    yield
    log.info("%s: done in %.1f s", what, time.monotonic() - t0)


def served_models(engine_config: EngineConfig | None, server_config: ServerConfig,
                  fleet_file: FleetFile | None) -> list[ModelConfig]:
    """The local base models to serve, in order: the command line's (`engine_config`, None
    when `[[model]]` tables stand in for it) as `served_model_name` or its folder's name,
    then each `[[model]]` of `fleet_file`."""
    out = []
    if engine_config is not None:
        out.append(ModelConfig(id=server_config.served_model_name or model_id_for(engine_config),
                               engine=engine_config, adapters_dir=server_config.adapters_dir,
                               price_input_per_mtok=server_config.price_input_per_mtok,
                               price_output_per_mtok=server_config.price_output_per_mtok))
    out += fleet_file.models if fleet_file else []
    if not out:
        raise ValueError("no model to serve: give --model or [[model]] tables in the fleet.toml")
    return out


def build_app(engine_config: EngineConfig | None, server_config: ServerConfig, fleet_file: FleetFile | None = None):
    """The app over every local base model (`served_models`), each loaded into its own engine."""
    from fleetlm.engine.async_engine import AsyncLLM

    specs = served_models(engine_config, server_config, fleet_file)
    llms = []
    for spec in specs:
        with stage(f"engine: loading {spec.engine.model} as {spec.id}{_first_start_note(spec.engine)}"):
            llms.append(AsyncLLM(spec.engine))
    embedder = load_embedder(server_config)
    prepare_grammar_in_background(llms)
    with stage("fleet: adapters, upstreams, programs, routers"):
        bases = [local_base(spec.id, llm, server=server_config, adapters_dir=spec.adapters_dir,
                            pricing=Pricing(spec.price_input_per_mtok, spec.price_output_per_mtok))
                 for spec, llm in zip(specs, llms)]
        app = app_for_bases(bases, config=server_config, fleet_file=fleet_file, embedder=embedder)
    return app


def prepare_grammar_in_background(llms: list) -> None:
    """Build each engine's tokenizer table for structured outputs on a background thread (a
    few seconds for a 262k vocabulary), so the first such request does not pay for it."""

    def prepare():
        with stage("grammar: building the tokenizer tables for structured outputs (in the background)"):
            for llm in llms:
                llm.engine.grammar().prepare()

    threading.Thread(target=prepare, name="fleetlm-grammar-prep", daemon=True).start()


def load_embedder(server_config: ServerConfig):
    """all-MiniLM-L6-v2 for /v1/embeddings, or None (disabled, or it failed to load)."""
    if not server_config.enable_embeddings:
        return None
    try:
        with stage("embeddings: loading all-MiniLM-L6-v2"):
            from fleetlm.models.embeddings import Embedder

            return Embedder()
    except Exception as exc:  # the server still serves generation without it
        log.warning("embeddings disabled: %s", exc)
        return None


def _exit_0_after_sigterm() -> None:
    """After a graceful shutdown uvicorn raises the signal it caught again, with the handler
    it found installed: by default SIGTERM then kills the process (exit status -15, which
    supervisors read as a crash). This handler makes that a normal exit with status 0; a
    SIGTERM before uvicorn takes over the signals (while the model loads) exits 0 too."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def _first_start_note(engine_config: EngineConfig) -> str:
    """What makes the first start slow, when it will be."""
    from fleetlm.models.embedded import DEFAULT_MODEL_ID, is_complete, model_dir

    if engine_config.model != DEFAULT_MODEL_ID:
        return ""
    cache = Path(engine_config.cache_dir) if engine_config.cache_dir else None
    if is_complete(model_dir(cache_dir=cache)):
        return ""
    return " (first start: converting the GGUF to safetensors, about a minute)"


def app_for_engine(llm, *, model_id: str, config: ServerConfig, fleet_file: FleetFile | None = None, embedder=None):
    """The app around one already-started engine (an AsyncLLM served as `model_id`, with the
    adapters of `config.adapters_dir` and its prices)."""
    base = local_base(model_id, llm, server=config, adapters_dir=config.adapters_dir,
                      pricing=Pricing(config.price_input_per_mtok, config.price_output_per_mtok))
    return app_for_bases([base], config=config, fleet_file=fleet_file, embedder=embedder)


def app_for_bases(bases: list, *, config: ServerConfig, fleet_file: FleetFile | None = None, embedder=None,
                  checks=()):
    """The app around already-built base models (`catalog.Base`s: local engines or remote ones,
    whose health `checks` report)."""
    from fleetlm.api.app import create_app
    from fleetlm.catalog import build

    fleet = build(bases, server=config, fleet=fleet_file, embedder=embedder, checks=checks)
    return create_app(config, fleet, embedder=embedder, tenants=fleet_file.tenants if fleet_file else None)


def serve(engine_config: EngineConfig | None, server_config: ServerConfig, fleet_file=None) -> None:
    """Serve `served_models` under uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    _exit_0_after_sigterm()
    app = build_app(engine_config, server_config, fleet_file)
    uvicorn.run(app, host=server_config.host, port=server_config.port, log_level="info",
                timeout_graceful_shutdown=server_config.shutdown_timeout_s,
                h11_max_incomplete_event_size=server_config.max_request_head_bytes)
