"""Tool retrieval: keep the tools most relevant to a query out of an OpenAI ``tools`` list.

A tool's text is its name (``snake_case``/``camelCase`` split into words), description and
parameter names/descriptions. :class:`ToolRetriever` scores every candidate tool for a query
with a weighted sum of

* ``dense``: cosine between MiniLM embeddings of the query and of the tool text;
* ``lexical``: BM25 of the tool text (corpus statistics over the candidates), divided by the
  best candidate's BM25 so it lies in [0, 1];
* ``knn`` and ``centroid`` (after :meth:`ToolRetriever.fit` on example queries labelled with
  tool names): the mean of the ``knn_m`` highest cosines between the query and that tool's
  examples, and the cosine with the mean of its examples. A tool without examples gets its
  ``dense`` score in their place.

Contract: ``rank(query, tools)`` returns candidate indices best first (ties: input order);
``select_tools(query, tools, max_tools=…, max_prompt_tokens=…)`` returns a subset in the
input's order, unchanged when under budget. Tool-text embeddings are cached by content hash
(bounded LRU), so a large tool list costs its embeddings once. Tools are matched to learned
examples by function name.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_STOP = frozenset(["a", "an", "and", "are", "as", "at", "be", "by", "can", "for", "from", "get", "i", "in", "is", "it", "me", "my", "of", "on", "or", "please", "the", "this", "to", "what", "which", "with", "you", "your"])


def tokenize(text: str) -> list[str]:
    """Lower-case words for BM25: ``camelCase``/``snake_case`` split, stop words dropped."""
    return [w for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOP]


def _function(tool: dict) -> dict:
    if not isinstance(tool, dict):
        raise ValueError(f"a tool must be an object, got {type(tool).__name__}")
    fn = tool.get("function", tool)  # OpenAI {"type": "function", "function": {...}} or bare
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError(f"a tool needs function.name, got {json.dumps(tool)[:120]}")
    return fn


def tool_name(tool: dict) -> str:
    return _function(tool)["name"]


def tool_text(tool: dict) -> str:
    """What retrieval reads of a tool: split name, description, parameter names and descriptions."""
    fn = _function(tool)
    name = " ".join(_WORD.findall(fn["name"]))
    parts = [f"{name}: {fn.get('description') or ''}".strip()]
    props = (fn.get("parameters") or {}).get("properties") or {}
    params = [" ".join(_WORD.findall(p)) + (f" ({s['description']})" if isinstance(s, dict)
                                             and s.get("description") else "") for p, s in props.items()]
    return " ".join(parts + (["Parameters: " + "; ".join(params)] if params else []))


class BM25:
    """Okapi BM25 over a small corpus (Lucene's k1, b); ``docs``: token lists or their Counters."""

    def __init__(self, docs: list[list[str] | Counter], *, k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.tfs = [d if isinstance(d, Counter) else Counter(d) for d in docs]
        self.lengths = np.array([d.total() if isinstance(d, Counter) else len(d) for d in docs], dtype=np.float64)
        self.avg = float(self.lengths.mean()) if docs and self.lengths.sum() else 1.0

    def scores(self, query: list[str]) -> np.ndarray:
        n = len(self.tfs)
        out = np.zeros(n)
        norm = self.k1 * (1 - self.b + self.b * self.lengths / self.avg)  # (n,)
        for term in set(query):
            # Document frequency of the query's terms only: the corpus changes per request.
            tf = np.fromiter((t.get(term, 0) for t in self.tfs), dtype=np.float64, count=n)
            df = int(np.count_nonzero(tf))
            if not df:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            out += idf * tf * (self.k1 + 1) / (tf + norm)
        return out


@dataclass(frozen=True)
class RetrievalWeights:
    """Signal weights. The defaults (MiniLM + 0.2 BM25) suit tools without examples; a fitted
    retriever wants :data:`LEARNED_WEIGHTS` (benchmarks/tool_retrieval.py measures both)."""
    dense: float = 1.0
    lexical: float = 0.2
    knn: float = 0.0
    centroid: float = 0.0
    knn_m: int = 3  # examples averaged per tool for the knn score

    def __post_init__(self):
        if min(self.dense, self.lexical, self.knn, self.centroid) < 0 or self.knn_m < 1:
            raise ValueError(f"weights must be >= 0 and knn_m >= 1, got {self}")


# Chosen on a validation slice of MetaTool's training half (benchmarks/tool_retrieval.py --tune).
LEARNED_WEIGHTS = RetrievalWeights(dense=0.25, lexical=0.2, knn=1.0, centroid=0.5, knn_m=5)

Encoder = Callable[[list[str]], np.ndarray]  # texts -> (N, d) float32, rows L2-normalised


def minilm_encoder(embedder=None) -> Encoder:
    """An :data:`Encoder` over :class:`fleetlm.models.embeddings.Embedder` (loaded on first use)."""
    state = {"embedder": embedder}

    def encode(texts: list[str]) -> np.ndarray:
        if state["embedder"] is None:
            from fleetlm.models.embeddings import Embedder

            state["embedder"] = Embedder()
        return state["embedder"].embed(list(texts)).vectors.numpy()

    return encode


@dataclass
class _Examples:
    """Fitted example queries as (example, tool) pairs grouped by tool, for one vectorised pass."""
    vectors: np.ndarray  # (E, d) example-query embeddings
    row: dict[str, int]  # tool name -> tool row t
    pair_example: np.ndarray  # (P,) example index of each pair, pairs grouped by tool row
    pair_tool: np.ndarray  # (P,) tool row of each pair, non-decreasing
    start: np.ndarray  # (T,) first pair of each tool row
    counts: np.ndarray  # (T,) examples per tool row
    centroids: np.ndarray  # (T, d) unit mean of each tool's examples

    @classmethod
    def build(cls, vectors: np.ndarray, labels: list) -> _Examples:
        by_tool: dict[str, list[int]] = {}
        for i, names in enumerate(labels):
            for name in ([names] if isinstance(names, str) else names):
                by_tool.setdefault(name, []).append(i)
        groups = list(by_tool.values())
        counts = np.array([len(g) for g in groups])
        return cls(vectors, {n: t for t, n in enumerate(by_tool)},
                   np.concatenate([np.array(g) for g in groups]), np.repeat(np.arange(len(groups)), counts),
                   np.concatenate([[0], np.cumsum(counts)[:-1]]), counts,
                   _unit_rows(np.stack([vectors[g].mean(0) for g in groups])))

    def scores(self, q: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(T,) knn scores (mean of each tool's top-m example cosines) and (T,) centroid cosines."""
        sims = (self.vectors @ q)[self.pair_example]  # (P,)
        order = np.lexsort((-sims, self.pair_tool))  # by tool, then best example first
        tool = self.pair_tool[order]
        top = (np.arange(len(order)) - self.start[tool]) < m
        total = np.bincount(tool[top], weights=sims[order][top], minlength=len(self.counts))
        return total / np.minimum(self.counts, m), self.centroids @ q


class ToolRetriever:
    """Scores tools for a query; see the module docstring. ``encode=None``: lexical only."""

    def __init__(self, encode: Encoder | None = None, *, weights: RetrievalWeights = RetrievalWeights(),
                 cache_size: int = 20_000):
        if encode is None and (weights.dense or weights.knn or weights.centroid):
            weights = RetrievalWeights(dense=0.0, lexical=1.0)  # nothing to embed with
        self.encode, self.weights, self.cache_size = encode, weights, cache_size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()  # content hash -> (d,)
        self._counts: OrderedDict[str, Counter] = OrderedDict()  # content hash -> term counts
        self._examples: _Examples | None = None
        self._lock = threading.Lock()

    def fit(self, queries: list[str], labels: list[list[str]], *, vectors: np.ndarray | None = None) -> ToolRetriever:
        """Learn from example queries, each labelled with the tool names it needs.

        ``vectors`` (the queries' embeddings, if already computed) skips re-encoding.
        """
        if len(queries) != len(labels) or not queries:
            raise ValueError(f"fit() needs as many label lists as queries (>0), got {len(queries)}/{len(labels)}")
        if self.encode is None and vectors is None:
            raise ValueError("fit() needs an encoder (or vectors)")
        vectors = np.asarray(vectors if vectors is not None else self.encode(list(queries)), dtype=np.float32)
        self._examples = _Examples.build(vectors, labels)
        return self

    def signals(self, query: str, tools: list[dict]) -> dict[str, np.ndarray]:
        """Each raw signal as a (len(tools),) array (only those with a non-zero weight)."""
        w, out = self.weights, {}
        texts = [tool_text(t) for t in tools]
        if w.lexical:
            counts = [self._cached(self._counts, t, lambda x: Counter(tokenize(x))) for t in texts]
            bm = BM25(counts).scores(tokenize(query))
            out["lexical"] = bm / bm.max() if bm.max() > 0 else bm
        if w.dense or w.knn or w.centroid:
            q = self.encode([query])[0]
            dense = self._embed_tools(texts) @ q
            out["dense"] = dense
            if w.knn or w.centroid:
                out["knn"], out["centroid"] = self._learned(q, [tool_name(t) for t in tools], dense)
        return out

    def scores(self, query: str, tools: list[dict]) -> np.ndarray:
        w = self.weights
        total = np.zeros(len(tools))
        for name, values in self.signals(query, tools).items():
            total += getattr(w, name) * values
        return total

    def rank(self, query: str, tools: list[dict]) -> list[int]:
        """Indices of ``tools``, most relevant first (stable for ties)."""
        if not tools:
            return []
        return [int(i) for i in np.argsort(-self.scores(query, tools), kind="stable")]

    def top_k(self, query: str, tools: list[dict], k: int) -> list[dict]:
        return [tools[i] for i in self.rank(query, tools)[:k]]

    def _learned(self, q: np.ndarray, names: list[str], dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        knn, centroid = dense.copy(), dense.copy()  # tools without examples keep their dense score
        ex = self._examples
        if ex is None:
            return knn, centroid
        have = [(i, ex.row[n]) for i, n in enumerate(names) if n in ex.row]
        if have:
            at, rows = map(list, zip(*have))
            k, c = ex.scores(q, self.weights.knn_m)
            knn[at], centroid[at] = k[rows], c[rows]
        return knn, centroid

    def _embed_tools(self, texts: list[str]) -> np.ndarray:
        keys = [_hash(t) for t in texts]
        with self._lock:  # a server may rank from several threads
            have = {k: self._vectors[k] for k in keys if k in self._vectors}
        missing = {k: t for k, t in zip(keys, texts) if k not in have}
        if missing:
            have.update(zip(missing, np.asarray(self.encode(list(missing.values())), dtype=np.float32)))
        with self._lock:
            for k in dict.fromkeys(keys):
                self._remember(self._vectors, k, have[k])
        return np.stack([have[k] for k in keys])

    def _cached(self, store: OrderedDict, text: str, compute):
        key = _hash(text)
        with self._lock:
            value = store.get(key)
        if value is None:
            value = compute(text)
        with self._lock:
            self._remember(store, key, value)
        return value

    def _remember(self, store: OrderedDict, key: str, value) -> None:
        """Insert or refresh ``key`` as most recent, evicting the oldest past cache_size."""
        store[key] = value
        store.move_to_end(key)
        while len(store) > self.cache_size:
            store.popitem(last=False)


def _unit_rows(m: np.ndarray) -> np.ndarray:
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def approx_tokens(tool: dict) -> int:
    """A prompt-token estimate for one tool: its JSON's characters / 4 (rounded up)."""
    return -(-len(json.dumps(tool, separators=(",", ":"))) // 4)


def select_tools(query: str, tools: list[dict], *, max_tools: int | None = None,
                 max_prompt_tokens: int | None = None, retriever: ToolRetriever | None = None,
                 count_tokens: Callable[[dict], int] = approx_tokens, keep: tuple[str, ...] = ()) -> list[dict]:
    """The tools to prompt with under a count and/or token budget, in their input order.

    Under budget (or with no budget) ``tools`` comes back as is. Otherwise tools named in
    ``keep`` (e.g. a ``tool_choice`` function) go first, then the best ranked by
    ``retriever`` (default: BM25 only, which loads no model) while both budgets hold; a tool
    too large for the remaining token budget is skipped, not a stop. Raises ValueError on a
    budget < 1 or a ``keep`` name not among the tools.
    """
    if (max_tools is not None and max_tools < 1) or (max_prompt_tokens is not None and max_prompt_tokens < 1):
        raise ValueError(f"max_tools and max_prompt_tokens must be >= 1, got {max_tools}, {max_prompt_tokens}")
    names = [tool_name(t) for t in tools]
    if set(keep) - set(names):
        raise ValueError(f"keep names tools that are not in the list: {sorted(set(keep) - set(names))}")
    sizes = [count_tokens(t) for t in tools] if max_prompt_tokens is not None else [0] * len(tools)
    if (max_tools is None or len(tools) <= max_tools) and (max_prompt_tokens is None or sum(sizes) <= max_prompt_tokens):
        return list(tools)
    retriever = retriever or ToolRetriever()
    forced = [i for i, n in enumerate(names) if n in keep]
    order = forced + [i for i in retriever.rank(query, tools) if names[i] not in keep]
    chosen, used = [], 0
    for i in order:
        if max_tools is not None and len(chosen) >= max_tools:
            break
        if max_prompt_tokens is not None and used + sizes[i] > max_prompt_tokens and i not in forced:
            continue
        chosen.append(i)
        used += sizes[i]
    return [tools[i] for i in sorted(chosen)]
