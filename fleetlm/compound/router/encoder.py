"""Prompt → routing embedding: all-MiniLM-L6-v2 over a short head+tail window of the prompt.

Why a window and not the whole prompt: (1) latency — on a 2-core CPU MiniLM costs about
0.2 ms per token, so a 256-token prompt alone would take ~40 ms against a 15 ms routing
budget; (2) signal — benchmark prompts open with long shared few-shot prefixes, so the first
256 tokens (what the embedder keeps) are identical across an entire task and the question
itself is cut off. The window keeps the first ``head_tokens`` content tokens (which say what
kind of task this is) and the last ``tail_tokens`` (the actual question), embedded as one
sequence with ``[CLS]``/``[SEP]``.

Contract: ``encode(texts) -> (n, 384) float32`` L2-normalised numpy rows, input order; the
same window parameters must be used to train and to route (the router saves them).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class EncoderConfig:
    head_tokens: int = 8  # content tokens kept from the start (task framing)
    tail_tokens: int = 32  # content tokens kept from the end (the question)

    def __post_init__(self):
        if self.head_tokens < 0 or self.tail_tokens < 0 or self.head_tokens + self.tail_tokens < 1:
            raise ValueError(f"need head_tokens, tail_tokens >= 0 and a window >= 1, got {self}")

    def to_json(self) -> dict:
        return asdict(self)


class RoutingEncoder:
    """Embeds prompts for routing. The MiniLM model loads on first use (a few seconds)."""

    def __init__(self, config: EncoderConfig = EncoderConfig(), embedder=None):
        self.config = config
        self._embedder = embedder  # fleetlm.models.embeddings.Embedder, built lazily
        self._tokenizer = None
        # A fast tokenizer raises "Already borrowed" if two threads call it at once.
        self._lock = threading.Lock()

    @property
    def embedder(self):
        """The underlying ``Embedder`` (loaded now if needed), e.g. to share with the server."""
        self._ensure_loaded()
        return self._embedder

    def window(self, ids: list[int]) -> list[int]:
        """The content ids the router reads: head + tail, without overlap."""
        h, t = self.config.head_tokens, self.config.tail_tokens
        if len(ids) <= h + t:
            return ids
        return ids[:h] + (ids[-t:] if t else [])

    def encode(self, texts: list[str]) -> np.ndarray:
        self._ensure_loaded()
        with self._lock:
            ids = self._tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return self._embedder.embed_token_ids([self.window(r) for r in ids]).vectors.numpy()

    def _ensure_loaded(self) -> None:
        with self._lock:
            if self._tokenizer is None:
                self._load()

    def _load(self) -> None:
        from transformers import AutoTokenizer

        from fleetlm.models.embeddings import Embedder, minilm_folder

        if self._embedder is None:
            self._embedder = Embedder()
        # Our own tokenizer instance (the embedder's is private and lock-guarded); we only
        # need its ids, and long prompts are cut to the window before the model sees them.
        tok = AutoTokenizer.from_pretrained(minilm_folder())
        tok.model_max_length = 1 << 30  # silence the "longer than 512" warning: we cut below
        self._tokenizer = tok
