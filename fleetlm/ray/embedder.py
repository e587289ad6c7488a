"""The embedding model (all-MiniLM-L6-v2) as its own deployment, and its stand-in in the gateway.

Contract: `EmbedderReplica.embed(texts)` returns that request's `EmbeddingResult`; the texts
of requests that reach one replica together are embedded as one batch (`@serve.batch`, up
to MAX_BATCH_REQUESTS requests, waiting at most BATCH_WAIT_S for more), so many small
requests (a router's or a tool's one-line queries) share forwards. Token-id inputs, rare
and individually checked, run alone. `RemoteEmbedder` has the `Embedder` interface the
gateway's /v1/embeddings uses (`model_id`, `dim`, `embed`, `embed_token_ids`); its methods
block on the deployment, so they are called from worker threads, as the Embedder's are."""

from __future__ import annotations

import asyncio
import json

import ray.exceptions
from ray import serve

from fleetlm.models.embeddings import EmbeddingResult

MAX_BATCH_REQUESTS = 32
BATCH_WAIT_S = 0.002  # a little company for a request costs it at most this much


class EmbedderReplica:
    def __init__(self):
        from fleetlm.models.embeddings import Embedder

        self.model = Embedder()

    @serve.batch(max_batch_size=MAX_BATCH_REQUESTS, batch_wait_timeout_s=BATCH_WAIT_S)
    async def embed(self, requests: list[list[str]]) -> list[EmbeddingResult]:
        """Every request's texts in one call to the model, split back per request."""
        flat = [t for texts in requests for t in texts]
        result = await asyncio.to_thread(self.model.embed, flat)
        out, start = [], 0
        for texts in requests:
            end = start + len(texts)
            out.append(EmbeddingResult(result.vectors[start:end].clone(), result.token_counts[start:end]))
            start = end
        return out

    async def embed_token_ids(self, ids: list[list[int]]) -> EmbeddingResult:
        return await asyncio.to_thread(self.model.embed_token_ids, ids)


class RemoteEmbedder:
    """The gateway's embedder: the same interface, the work done by the embedder deployment."""

    def __init__(self, handle):
        from fleetlm.models.embeddings import EMBEDDING_MODEL_ID, minilm_folder

        self.handle, self.model_id = handle, EMBEDDING_MODEL_ID
        self.dim: int = json.loads((minilm_folder() / "config.json").read_text())["hidden_size"]

    def embed(self, texts: list[str]) -> EmbeddingResult:
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("embed() takes a non-empty list of strings")
        return self._call("embed", list(texts))

    def embed_token_ids(self, ids: list[list[int]]) -> EmbeddingResult:
        return self._call("embed_token_ids", ids)

    def _call(self, method: str, arg) -> EmbeddingResult:
        """The replica's answer; its ValueError (an input the model cannot take) raised as such."""
        try:
            return getattr(self.handle, method).remote(arg).result()
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, ValueError):
                raise ValueError(str(exc.cause)) from None
            raise
