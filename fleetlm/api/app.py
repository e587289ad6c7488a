"""The FastAPI application: routes, auth, body limits, admission control, lifespan.

`create_app` takes already-built parts (the async engine, an optional embedder) so tests
and the CLI decide what runs; nothing is created at import."""

from __future__ import annotations

import asyncio
import hmac
import time

import httpx
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from fleetlm.api.adapters import AdapterRegistry, AdapterSource, LoadLoRARequest, UnloadLoRARequest
from fleetlm.api.errors import error_response, install_error_handlers
from fleetlm.openai.errors import APIError
from fleetlm.api.metrics import Metrics
from fleetlm.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from fleetlm.api.serving import LocalModel, LocalTarget, Serving
from fleetlm.backends.router import RouterTarget, fixed_order
from fleetlm.backends.upstream import upstream_targets
from fleetlm.catalog import Catalog
from fleetlm.config import ServerConfig
from fleetlm.engine.async_engine import AsyncLLM

OPEN_PATHS = ("/health", "/metrics", "/docs", "/openapi.json")
# metric labels: known routes only, so random paths cannot grow the label set without bound
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models")


class BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, whether or not Content-Length is sent."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send):
        resp = error_response(413, f"request body larger than {self.max_bytes} bytes")
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})


class _TooLarge(Exception):
    pass


def build_routers(configs, by_id: dict, metrics: Metrics) -> list[RouterTarget]:
    """RouterTargets (plus router/auto for the default one) over already-built Targets."""
    out = []
    for cfg in configs:
        missing = sorted(set(cfg.candidates.values()) - set(by_id))
        if missing:
            raise ValueError(f"router {cfg.name}: unknown candidate model ids {missing}")
        if cfg.path is not None:
            from fleetlm.compound.router.router import Router

            router = Router.load(cfg.path)
            if cfg.lam is not None:
                router.lam = cfg.lam
            unknown = sorted(set(cfg.candidates) - set(router.models))
            if unknown:
                raise ValueError(f"router {cfg.name}: candidates {unknown} are not models of {cfg.path} "
                                 f"({', '.join(router.models)})")
            router.rank("warm-up")  # loads the embedding model now, not on the first request
            rank = router.rank
        else:
            rank = fixed_order(cfg.order)
        candidates = {name: by_id[mid] for name, mid in cfg.candidates.items()}
        ids = [f"router/{cfg.name}"] + (["router/auto"] if cfg.default else [])
        for rid in ids:
            out.append(RouterTarget(rid, rank, candidates, cooldown_s=cfg.cooldown_s,
                                    on_served=lambda r, m: metrics.routed.labels(r, m).inc()))
    return out


def create_app(config: ServerConfig, llm: AsyncLLM, *, model_id: str, embedder=None,
               structured=None, upstreams=(), routers=(), pools=(), tool_agents=()) -> FastAPI:
    """upstreams: `UpstreamConfig`s whose models are served as upstream/<name>/<model>;
    routers: `RouterConfig`s served as router/<name> over those (and the local) Targets;
    pools: `PoolConfig`s, one model id over several Targets, routed by prompt length;
    tool_agents: `ToolAgentConfig`s served as compound/<name>. With an engine started with
    LoRA, adapters are served as <model_id>:<adapter> (config.adapters_dir, and
    /v1/load_lora_adapter at run time)."""
    metrics = Metrics()
    metrics.bind_engine(llm.engine)
    created = int(time.time())
    local = LocalModel(model_id, llm, created)
    serving = Serving(local, metrics, structured=structured, max_tools=config.max_tools)
    clients = []
    targets = [LocalTarget(serving)]
    for up in upstreams:
        client = httpx.AsyncClient(timeout=httpx.Timeout(up.timeout_s, connect=up.connect_timeout_s))
        clients.append(client)
        targets += upstream_targets(up, client, on_usage=metrics.record_usage)
    targets += build_routers(routers, {t.model_id: t for t in targets}, metrics)
    if pools:
        from fleetlm.backends.pools import build_pools

        targets += build_pools(pools, {t.model_id: t for t in targets},
                               on_served=lambda r, m: metrics.routed.labels(r, m).inc())
    if tool_agents:  # last: a planner or joiner may be a router or a pool
        from fleetlm.compound.programs.tool_agent import build_tool_agent

        by_id = {t.model_id: t for t in targets}
        targets += [build_tool_agent(cfg, by_id, embedder=embedder) for cfg in tool_agents]
    adapters = None
    if llm.engine.lora_pool is not None:
        adapters = AdapterRegistry(llm.engine.lora_pool, adapters_dir=config.adapters_dir,
                                   rescan_s=config.adapter_rescan_s)
    elif config.adapters_dir:
        raise ValueError("adapters_dir needs an engine started with LoRA support (enable_lora)")
    catalog = Catalog(targets, sources=[AdapterSource(serving, adapters)] if adapters else [])

    @asynccontextmanager
    async def lifespan(_app):
        yield
        for client in clients:
            await client.aclose()
        llm.shutdown()  # aborts whatever is still running, frees the engine thread

    app = FastAPI(title="fleetlm", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)

    @app.middleware("http")
    async def auth_and_count(request: Request, call_next):
        path = request.url.path
        if config.api_key and not path.startswith(OPEN_PATHS):
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), config.api_key.encode()):
                metrics.requests.labels(path if path in ROUTES else "other", "401").inc()
                return error_response(401, "invalid or missing API key (Authorization: Bearer ...)",
                                      code="invalid_api_key")
        response = await call_next(request)
        metrics.requests.labels(path if path in ROUTES else "other", str(response.status_code)).inc()
        return response

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)

    def check_embedding_model(name: str) -> None:
        if embedder is None or name != embedder.model_id:
            raise APIError(404, f"The model {name!r} does not exist; see GET /v1/models", param="model",
                           code="model_not_found")

    def admit() -> None:
        if llm.num_unfinished() >= config.max_pending_requests:
            metrics.pending.set(llm.num_unfinished())
            raise APIError(429, "server is at capacity; retry shortly", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"})

    @app.get("/health")
    async def health():
        if llm.error is not None:
            return error_response(503, f"engine failed: {llm.error}")
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        metrics.pending.set(llm.num_unfinished())
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        data = catalog.cards(created)
        if embedder is not None:
            data.append({"id": embedder.model_id, "object": "model", "created": created,
                         "owned_by": "fleetlm"})
        return {"object": "list", "data": data}

    def target_for(req):
        """The catalog Target for req.model; the local engine (base model, adapters, compound
        programs that call it) also passes admission control."""
        target = catalog.resolve(req.model)
        if target.model_id == model_id or getattr(target, "serving", None) is serving \
                or target.model_id.startswith("compound/"):
            admit()
        return target

    def registry() -> AdapterRegistry:
        if adapters is None:
            raise APIError(400, "this server's engine was started without LoRA support "
                                "(fleet serve --enable-lora or --adapters-dir)")
        return adapters

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(req: LoadLoRARequest) -> Response:
        """vLLM's runtime adapter loading: validated (in a worker thread) before it is listed."""
        lora = await asyncio.to_thread(registry().load, req.lora_name, req.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{lora.name}' added successfully "
                                 f"as model {model_id}:{lora.name}.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(req: UnloadLoRARequest) -> Response:
        registry().unload(req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, raw: Request) -> Response:
        return await target_for(req).chat(req, raw)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request) -> Response:
        return await target_for(req).complete(req, raw)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> Response:
        check_embedding_model(req.model)
        from fleetlm.models.embeddings import encode_vector

        if req.dimensions is not None and req.dimensions != embedder.dim:
            raise APIError(400, f"{embedder.model_id} has {embedder.dim} dimensions; "
                                f"dimensions={req.dimensions} is not supported", param="dimensions")
        inp = req.input
        if isinstance(inp, str) or (isinstance(inp, list) and inp and isinstance(inp[0], str)):
            texts = [inp] if isinstance(inp, str) else list(inp)
            if any(not t for t in texts):
                raise APIError(400, "input must not contain empty strings", param="input")
            fn, arg = embedder.embed, texts
        else:
            fn, arg = embedder.embed_token_ids, ([inp] if isinstance(inp[0], int) else [list(x) for x in inp])
        try:
            result = await asyncio.to_thread(fn, arg)
        except ValueError as exc:  # e.g. token ids outside the embedding model's vocabulary
            raise APIError(400, str(exc), param="input")
        data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, req.encoding_format)}
                for i, v in enumerate(result.vectors)]
        n = sum(result.token_counts)
        return JSONResponse({"object": "list", "data": data, "model": embedder.model_id,
                             "usage": {"prompt_tokens": n, "total_tokens": n}})

    return app
