"""/v1/embeddings through the openai client: 384-d MiniLM vectors equal to sentence-transformers'."""

from __future__ import annotations

import numpy as np
import pytest

from tests.api.conftest import start_server

TEXTS = ["The cat sits on the mat.", "Kubernetes schedules pods onto nodes.", "Ünïcödé — 日本語のテキスト 🙂"]


@pytest.fixture(scope="module")
def embed_server(tiny_gemma):
    from fleetlm.models.embeddings import Embedder

    running, srv, thread = start_server(tiny_gemma, embedder=Embedder())
    yield running
    srv.should_exit = True
    thread.join(10)


def test_embeddings_match_sentence_transformers(embed_server):
    from sentence_transformers import SentenceTransformer

    from fleetlm.models.embeddings import minilm_folder

    client = embed_server.client()
    assert "all-minilm-l6-v2" in [m.id for m in client.models.list().data]
    r = client.embeddings.create(model="all-minilm-l6-v2", input=TEXTS)
    ours = np.array([d.embedding for d in r.data])
    assert ours.shape == (3, 384)
    ref = SentenceTransformer(str(minilm_folder()), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert np.abs(ours - ref).max() <= 1e-4
    assert r.usage.prompt_tokens > 0
    # base64 (the openai client's default wire format when numpy is present) decodes to the same
    b64 = client.embeddings.create(model="all-minilm-l6-v2", input=TEXTS[0], encoding_format="base64")
    vec = b64.data[0].embedding
    vec = np.frombuffer(__import__("base64").b64decode(vec), dtype="<f4") if isinstance(vec, str) else np.array(vec)
    assert np.abs(vec - ours[0]).max() <= 1e-6


def test_embedding_errors(embed_server):
    import httpx

    url = f"{embed_server.base_url}/v1/embeddings"
    assert httpx.post(url, json={"model": "all-minilm-l6-v2", "input": ""}).status_code == 400
    assert httpx.post(url, json={"model": "all-minilm-l6-v2", "input": "x", "dimensions": 12}).status_code == 400
    assert httpx.post(url, json={"model": "tiny", "input": "x"}).status_code == 404
    assert httpx.post(url, json={"model": "all-minilm-l6-v2", "input": [10**9]}).status_code == 400
