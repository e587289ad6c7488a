"""The FastAPI application: routes only. The fleet comes built (`catalog.build`), requests go
through `Dispatch`, errors through `api.errors`; nothing is created at import."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from fleetlm.api.dispatch import Dispatch
from fleetlm.api.embeddings import embeddings as embed
from fleetlm.api.errors import error_response, install_error_handlers
from fleetlm.api.metrics import Metrics
from fleetlm.api.middleware import install_middleware
from fleetlm.catalog import Fleet
from fleetlm.config import ServerConfig, TenantsConfig
from fleetlm.openai import format as fmt
from fleetlm.openai.errors import BadRequestError
from fleetlm.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    LoadLoRARequest,
    UnloadLoRARequest,
)


def create_app(config: ServerConfig, fleet: Fleet, *, embedder=None, tenants: TenantsConfig | None = None) -> FastAPI:
    """The server for `fleet`; its engines and upstream clients are closed at shutdown. With
    `tenants`, keys, budgets and the ledger live in its database (closed at shutdown too)."""
    metrics = Metrics()
    metrics.bind_engines(list(fleet.engines.values()))
    gate = None
    if tenants is not None:
        from fleetlm.tenants.gate import Tenants

        gate = Tenants(tenants, master_key=config.api_key)
    dispatch = Dispatch(fleet.catalog, metrics, max_pending=config.max_pending_requests, tenants=gate)
    runner = None
    if gate is not None:
        from fleetlm.tenants.files import FileStore
        from fleetlm.tenants.runner import BatchRunner

        files = FileStore(gate.db, tenants.files_dir, max_bytes=tenants.max_file_bytes)
        runner = BatchRunner(gate.db, files, dispatch.answer, concurrency=tenants.batch_concurrency,
                             discount=tenants.batch_discount, max_lines=tenants.max_batch_lines,
                             interactive=lambda: dispatch.interactive)
    metrics.pending.set_function(lambda: dispatch.admission.total)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app):
        for start in fleet.starters:
            await start()
        if runner is not None:
            await runner.start()  # batches left unfinished by the last run resume now
        yield
        if runner is not None:
            await runner.stop()
        await fleet.aclose()
        if gate is not None:
            gate.close()

    app = FastAPI(title="fleetlm", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    install_middleware(app, metrics, api_key=config.api_key, max_body_bytes=config.max_body_bytes, tenants=gate,
                       upload_bytes=tenants.max_file_bytes + 2**20 if tenants else None,
                       send_timeout_s=config.send_timeout_s)
    if gate is not None:
        from fleetlm.api.admin import install_admin
        from fleetlm.api.batches import install_batches

        install_admin(app, gate)
        install_batches(app, files, runner)

    @app.get("/health")
    async def health():
        problems = await fleet.problems()  # a stopped engine; a remote base model without a live replica
        return error_response(503, f"degraded: {'; '.join(problems)}") if problems else {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(raw: Request):
        data = [fmt.model_card(card, created) for card in fleet.catalog.cards()]
        if embedder is not None:
            data.append({"id": embedder.model_id, "object": "model", "created": created, "owned_by": "fleetlm"})
        caller = getattr(raw.state, "caller", None)  # a tenant's key sees the models it may use
        return {"object": "list", "data": [m for m in data if caller is None or caller.allows(m["id"])]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, raw: Request) -> Response:
        return await dispatch.chat(req, raw)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request) -> Response:
        return await dispatch.complete(req, raw)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest, raw: Request):
        caller = getattr(raw.state, "caller", None)
        if gate is not None and caller is not None:
            gate.check_model(caller, req.model)
        return await embed(embedder, req)

    def registry():
        """The first local base model with LoRA on takes runtime loads (vLLM's API names no base)."""
        if not fleet.adapters:
            raise BadRequestError("this server's engine was started without LoRA support "
                                  "(fleet serve --enable-lora or --adapters-dir)")
        return next(iter(fleet.adapters.items()))

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(req: LoadLoRARequest) -> Response:
        """vLLM's runtime adapter loading: validated (in a worker thread) before it is listed."""
        base, adapters = registry()
        lora = await asyncio.to_thread(adapters.load, req.lora_name, req.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{lora.name}' added successfully as model {base}:{lora.name}.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(req: UnloadLoRARequest) -> Response:
        registry()[1].unload(req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    return app
