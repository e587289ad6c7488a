"""One engine replica: a base model's `AsyncLLM` and its local Targets (the base model and its
adapters), behind a Ray Serve deployment.

Contract: `chat` / `complete` are streaming generators that yield the local Target's chunks
as the engine produces them (no batching of outputs, so the first token leaves at once),
and a `RemoteError` in place of an `APIError`. Cancelling the call (the gateway's client
went away) closes the local Target's iterator, which aborts its engine rows. `check_health`
fails once the engine thread has stopped, so Ray replaces the replica. Adapters
(`<id>:<name>`) go through `@serve.multiplexed`, so Ray routes each adapter's requests to
replicas that already hold it."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

from ray import serve

from fleetlm.catalog import local_base
from fleetlm.config import ServerConfig
from fleetlm.deploy_config import ModelConfig
from fleetlm.openai.chunks import ModelCard, Pricing
from fleetlm.openai.errors import APIError, NotFoundError
from fleetlm.openai.protocol import ChatCompletionRequest, CompletionRequest
from fleetlm.ray.wire import RemoteError

# adapters Ray tracks per replica for routing; the engine's own LoRA pool (max_loras) decides
# what stays resident, so this only needs to be at least as large
MAX_ADAPTERS_TRACKED = 64


class EngineReplica:
    def __init__(self, spec: ModelConfig, server: ServerConfig):
        from fleetlm.api.server import prepare_grammar_in_background
        from fleetlm.engine.async_engine import AsyncLLM

        self.model_id = spec.id
        self.llm = AsyncLLM(spec.engine)
        self.base = local_base(spec.id, self.llm, server=server, adapters_dir=spec.adapters_dir,
                               pricing=Pricing(spec.price_input_per_mtok, spec.price_output_per_mtok))
        self.adapter_requests: Counter[str] = Counter()  # adapter -> requests Ray routed here
        prepare_grammar_in_background([self.llm])  # as `fleet serve` does

    def card(self) -> ModelCard:
        """The base model's `/v1/models` entry (the gateway asks once, at its start)."""
        return self.base.target.card()

    def check_health(self) -> None:
        """Ray calls it periodically; raising marks the replica unhealthy and has it replaced."""
        error = self.llm.stats().error
        if error:
            raise RuntimeError(f"engine stopped: {error}")

    @serve.multiplexed(max_num_models_per_replica=MAX_ADAPTERS_TRACKED)
    async def adapter(self, model: str):
        """The Target of adapter `model` (`<id>:<name>`), loaded from the adapters folder."""
        target = self.base.source.resolve(model) if self.base.source is not None else None
        if target is None:
            raise NotFoundError(f"The model {model!r} does not exist; see GET /v1/models")
        return target

    def routed_adapters(self) -> tuple[str, dict[str, int]]:
        """(this replica's id, requests per adapter it served): where multiplexing sent them."""
        return serve.get_replica_context().replica_id.unique_id, dict(self.adapter_requests)

    async def _target(self, model: str):
        if model == self.model_id:
            return self.base.target
        self.adapter_requests[model] += 1
        return await self.adapter(model)

    async def chat(self, req: ChatCompletionRequest, model: str) -> AsyncIterator:
        async for item in self._run("chat", req, model):
            yield item

    async def complete(self, req: CompletionRequest, model: str) -> AsyncIterator:
        async for item in self._run("complete", req, model):
            yield item

    async def _run(self, method: str, req, model: str) -> AsyncIterator:
        try:
            target = await self._target(model)
            async for chunk in getattr(target, method)(req):
                yield chunk
        except APIError as exc:
            yield RemoteError.of(exc)

    def __del__(self):
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.shutdown()  # Ray stops the replica: abort what is left, free the engine thread
