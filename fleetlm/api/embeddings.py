"""POST /v1/embeddings on the server's embedder (all-MiniLM-L6-v2): OpenAI's shapes."""

from __future__ import annotations

import asyncio

from fleetlm.openai.errors import BadRequestError, NotFoundError
from fleetlm.openai.protocol import EmbeddingRequest


async def embeddings(embedder, req: EmbeddingRequest) -> dict:
    """Embed text or token ids (in a worker thread); 404 for another model id."""
    from fleetlm.models.embeddings import encode_vector

    if embedder is None or req.model != embedder.model_id:
        raise NotFoundError(f"The model {req.model!r} does not exist; see GET /v1/models")
    if req.dimensions is not None and req.dimensions != embedder.dim:
        raise BadRequestError(f"{embedder.model_id} has {embedder.dim} dimensions; "
                              f"dimensions={req.dimensions} is not supported", param="dimensions")
    inp = req.input
    if isinstance(inp, str) or (isinstance(inp, list) and inp and isinstance(inp[0], str)):
        texts = [inp] if isinstance(inp, str) else list(inp)
        if any(not t for t in texts):
            raise BadRequestError("input must not contain empty strings", param="input")
        fn, arg = embedder.embed, texts
    else:
        fn, arg = embedder.embed_token_ids, ([inp] if isinstance(inp[0], int) else [list(x) for x in inp])
    try:
        result = await asyncio.to_thread(fn, arg)
    except ValueError as exc:  # e.g. token ids outside the embedding model's vocabulary
        raise BadRequestError(str(exc), param="input")
    data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, req.encoding_format)}
            for i, v in enumerate(result.vectors)]
    n = sum(result.token_counts)
    return {"object": "list", "data": data, "model": embedder.model_id,
            "usage": {"prompt_tokens": n, "total_tokens": n}}
