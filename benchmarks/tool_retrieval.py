"""Tool retrieval on MetaTool and on the pooled BFCL functions: recall of the right tools.

MetaTool (../shared/data/function_calling/metatool): 199 tools (``plugin_des.json``), 20,614
single-tool queries and 497 two-tool queries, each set split 50/50 by a permutation with
seed 0. Learned signals (kNN over example queries, per-tool centroids) use only the first
half (single- and two-tool); every figure is on the second half. The fused weights come
from ``--tune``'s grid on a validation slice (the last 20% of the single-tool and 40% of the
two-tool training queries), never the test half: its best settings tie within 0.01
(single r@5 + two-tool all@5 about 1.70), and among those we keep a non-zero description
weight so that tools without examples still rank.

BFCL pooled: every distinct function doc (canonical JSON) in the BFCL files, multi-turn docs
included, is one candidate; each single-turn question with an answer is a query (its user
text), gold = the docs its answer calls. Nothing is learned there.

Also times ``select_tools`` (fused retriever, warm embedding cache, and the first call that
embeds the tools) for 100 and 900 candidates. MiniLM embeddings of queries and tool texts
are cached in ~/.cache/fleetlm/tool_retrieval_minilm.npz (``--no-cache`` recomputes).
Writes ``benchmarks/results/tool_retrieval.txt``; the last line is
``metatool recall@5: 0.xx`` (single-tool, best method).

    .venv/bin/python benchmarks/tool_retrieval.py [--tune]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from fleetlm.compound.tools.retrieval import (
    LEARNED_WEIGHTS,
    RetrievalWeights,
    ToolRetriever,
    select_tools,
)
from fleetlm.evals.bfcl import (
    available_categories,
    default_root,
    load_category,
    to_openai_tools,
)

RESULTS = Path(__file__).parent / "results"
METATOOL = default_root().parent / "metatool"
CACHE = Path.home() / ".cache" / "fleetlm" / "tool_retrieval_minilm.npz"
SEED, K = 0, 5
FUSED = LEARNED_WEIGHTS  # from --tune (see the docstring)
METHODS = {  # name -> (weights, learned?)
    "bm25": (RetrievalWeights(dense=0.0, lexical=1.0), False),
    "minilm (descriptions)": (RetrievalWeights(dense=1.0, lexical=0.0), False),
    "minilm + bm25 (default)": (RetrievalWeights(), False),
    "centroid (learned)": (RetrievalWeights(dense=0.0, lexical=0.0, centroid=1.0), True),
    "knn m=5 (learned)": (RetrievalWeights(dense=0.0, lexical=0.0, knn=1.0, knn_m=5), True),
    "fused (learned)": (FUSED, True),
}


class CachedEncoder:
    """MiniLM over texts, remembering every vector in one .npz (the benchmark's only state)."""

    def __init__(self, path: Path | None):
        self.path, self.store, self.embedder = path, {}, None  # store: sha1(text) -> (384,)
        if path is not None and path.is_file():
            z = np.load(path, allow_pickle=False)
            self.store = dict(zip(z["keys"].tolist(), z["vectors"]))

    def __call__(self, texts: list[str]) -> np.ndarray:
        keys = [_key(t) for t in texts]
        missing = list(dict.fromkeys((k, t) for k, t in zip(keys, texts) if k not in self.store))
        if missing:
            if self.embedder is None:
                from fleetlm.models.embeddings import Embedder
                self.embedder = Embedder()
            for i in range(0, len(missing), 2048):
                chunk = missing[i:i + 2048]
                vectors = self.embedder.embed([t for _, t in chunk]).vectors.numpy()
                self.store.update(zip([k for k, _ in chunk], vectors))
            self.save()
        return np.stack([self.store[k] for k in keys]).astype(np.float32)

    def uncached(self):
        """An encoder sharing the loaded model but not the cache (for honest timings)."""
        def encode(texts):
            if self.embedder is None:
                from fleetlm.models.embeddings import Embedder
                self.embedder = Embedder()
            return self.embedder.embed(list(texts)).vectors.numpy()
        return encode

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = list(self.store)
            np.savez(self.path, keys=np.array(keys), vectors=np.stack([self.store[k] for k in keys]))


def _key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def load_metatool():
    """(tools, (train_single, test_single), (train_two, test_two)); queries as (text, [names])."""
    desc = json.loads((METATOOL / "plugin_des.json").read_text())
    tools = [{"type": "function", "function": {"name": n, "description": d}} for n, d in desc.items()]
    with open(METATOOL / "all_clean_data.csv", newline="") as f:
        single = [(r["Query"], [r["Tool"]]) for r in csv.DictReader(f)]
    two = [(r["query"], list(r["tool"])) for r in json.loads((METATOOL / "multi_tool_query_golden.json").read_text())]
    rng = np.random.default_rng(SEED)
    halves = []
    for rows in (single, two):
        p = rng.permutation(len(rows))
        halves.append(([rows[i] for i in p[: len(p) // 2]], [rows[i] for i in p[len(p) // 2:]]))
    return tools, halves[0], halves[1]


def signal_table(retriever: ToolRetriever, queries, tools) -> dict[str, np.ndarray]:
    """Every raw signal for every query: name -> (Q, T)."""
    rows = [retriever.signals(q, tools) for q, _ in queries]
    return {name: np.stack([r[name] for r in rows]) for name in rows[0]}


def metrics(scores: np.ndarray, queries, names: list[str]) -> dict[str, float]:
    """recall@1 and recall@5 (mean share of gold in the top k) and all-gold-in-top-5."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    pos = {n: i for i, n in enumerate(names)}
    gold = [[pos[n] for n in g] for _, g in queries]
    return {"r@1": float(np.mean([np.mean([x == t[0] for x in g]) for g, t in zip(gold, top)])),
            "r@5": float(np.mean([np.mean([x in t for x in g]) for g, t in zip(gold, top)])),
            "all@5": float(np.mean([all(x in t for x in g) for g, t in zip(gold, top)]))}


def fuse(signals: dict[str, np.ndarray], w: RetrievalWeights, m_key: str = "knn") -> np.ndarray:
    return sum(getattr(w, n) * signals[m_key if n == "knn" else n]
               for n in ("dense", "lexical", "knn", "centroid") if getattr(w, n))


def all_signals(encode, train, queries, tools, ms=(5,)) -> dict[str, np.ndarray]:
    """Signals of ``queries`` with examples ``train``; knn once per m (``knn`` = ms[0])."""
    out = {}
    for m in ms:
        r = ToolRetriever(encode, weights=RetrievalWeights(dense=1, lexical=1, knn=1, centroid=1, knn_m=m))
        r.fit([q for q, _ in train], [g for _, g in train], vectors=encode([q for q, _ in train]))
        s = signal_table(r, queries, tools)
        out.update({k: v for k, v in s.items() if k != "knn" or m == ms[0]}, **{f"knn{m}": s["knn"]})
    return out


def tune(encode, tools, single_train, two_train, out: list[str]) -> None:
    """Grid over fused weights on a validation slice of the training half (never the test half)."""
    s_cut, t_cut = int(len(single_train) * 0.8), int(len(two_train) * 0.6)
    fit = single_train[:s_cut] + two_train[:t_cut]
    val_s, val_t = single_train[s_cut:][:1000], two_train[t_cut:]
    names = [t["function"]["name"] for t in tools]
    ms = (1, 3, 5, 8)
    sig_s, sig_t = all_signals(encode, fit, val_s, tools, ms), all_signals(encode, fit, val_t, tools, ms)
    best = []
    for d, lex, c, m in itertools.product([0, 0.25, 0.5, 1], [0, 0.1, 0.2, 0.4], [0, 0.5, 1], ms):
        w = RetrievalWeights(dense=d, lexical=lex, knn=1.0, centroid=c, knn_m=m)
        a = metrics(fuse(sig_s, w, f"knn{m}"), val_s, names)["r@5"]
        b = metrics(fuse(sig_t, w, f"knn{m}"), val_t, names)["all@5"]
        best.append((a + b, a, b, w))
    best.sort(key=lambda x: x[:3], reverse=True)
    out.append("tuning (validation slice of the training half): best 5 by single r@5 + two-tool all@5")
    out += [f"  {a:.3f} {b:.3f}  {w}" for _, a, b, w in best[:5]]


def pooled_bfcl():
    """(corpus tools, queries as (text, [corpus keys]), key of each corpus tool)."""
    root = default_root()
    docs: dict[str, dict] = {}
    for path in sorted((root / "multi_turn_func_doc").glob("*.json")):
        for line in path.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                docs.setdefault(json.dumps(d, sort_keys=True), d)
    queries = []
    for cat in available_categories(root):
        if cat.startswith("multi_turn"):
            continue
        for q in load_category(cat, root):
            keys = {d["name"]: json.dumps(d, sort_keys=True) for d in q.functions}
            for d in q.functions:
                docs.setdefault(json.dumps(d, sort_keys=True), d)
            if q.ground_truth:
                text = "\n".join(m["content"] for m in q.turns[0] if m["role"] == "user")
                queries.append((text, sorted({keys[next(iter(a))] for a in q.ground_truth})))
    keys = list(docs)
    tools = to_openai_tools(list(docs.values())).tools  # names may repeat across docs: rank by index
    return tools, queries, keys


def latency(encode: CachedEncoder, train, cases, queries: list[str], out: list[str]) -> None:
    """``select_tools`` timings: the first call (embeds every tool), then 20 warm calls, with
    the share spent embedding the query (MiniLM on CPU) shown separately."""
    spent = []

    def timed(texts):
        t0 = time.perf_counter()
        vectors = live(texts)
        spent.append(time.perf_counter() - t0)
        return vectors

    live = encode.uncached()
    for label, tools in cases:
        r = ToolRetriever(timed, weights=FUSED).fit(
            [q for q, _ in train], [g for _, g in train], vectors=encode([q for q, _ in train]))
        t0 = time.perf_counter()
        select_tools(queries[0], tools, max_tools=K, retriever=r)
        cold = time.perf_counter() - t0
        total, embed = [], []
        for q in queries[1:21]:
            spent.clear()
            t0 = time.perf_counter()
            select_tools(q, tools, max_tools=K, retriever=r)
            total.append(time.perf_counter() - t0)
            embed.append(sum(spent))
        med = statistics.median
        out.append(f"select_tools (fused), {label}, top {K}: first call {cold * 1e3:.0f} ms (embeds the tools); "
                   f"warm median {med(total) * 1e3:.1f} ms per query = {med(embed) * 1e3:.1f} ms query "
                   f"embedding + {med([t - e for t, e in zip(total, embed)]) * 1e3:.1f} ms scoring")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", action="store_true", help="rerun the weight grid on the training half")
    ap.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    args = ap.parse_args()
    if not METATOOL.is_dir() or not default_root().is_dir():
        print(f"skipped: MetaTool or BFCL data not found under {METATOOL.parent} (see ../shared/data/SOURCES.md)")
        return 0
    encode = CachedEncoder(None if args.no_cache else CACHE)
    out: list[str] = []
    tools, (single_train, single_test), (two_train, two_test) = load_metatool()
    names = [t["function"]["name"] for t in tools]
    out.append(f"MetaTool: {len(tools)} tools; single-tool {len(single_train)} train / {len(single_test)} test, "
               f"two-tool {len(two_train)} train / {len(two_test)} test (seed {SEED})")
    if args.tune:
        tune(encode, tools, single_train, two_train, out)
    train = single_train + two_train
    sig_s, sig_t = all_signals(encode, train, single_test, tools), all_signals(encode, train, two_test, tools)
    out.append(f"{'method':<24}{'single r@1':>11}{'single r@5':>11}{'two all@5':>10}{'two r@5':>9}")
    best = 0.0
    for name, (w, _) in METHODS.items():
        s, t = metrics(fuse(sig_s, w), single_test, names), metrics(fuse(sig_t, w), two_test, names)
        best = max(best, s["r@5"])
        out.append(f"{name:<24}{s['r@1']:>11.3f}{s['r@5']:>11.3f}{t['all@5']:>10.3f}{t['r@5']:>9.3f}")

    corpus, queries, keys = pooled_bfcl()
    sig = signal_table(ToolRetriever(encode, weights=RetrievalWeights(dense=1, lexical=1)), queries, corpus)
    out.append(f"BFCL pooled: {len(corpus)} distinct functions, {len(queries)} queries (no learning)")
    out.append(f"{'method':<24}{'r@1':>8}{'r@5':>8}{'all@5':>8}")
    for name, (w, learned) in METHODS.items():
        if not learned:
            m = metrics(fuse(sig, w), queries, keys)
            out.append(f"{name:<24}{m['r@1']:>8.3f}{m['r@5']:>8.3f}{m['all@5']:>8.3f}")

    cases = [("MetaTool 199 tools with learned examples", tools), ("BFCL 100 functions", corpus[:100]),
             ("BFCL 900 functions", corpus[:900])]
    latency(encode, train, cases, [q for q, _ in single_test[:21]], out)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out.append(f"(timings on {os.cpu_count()} CPU cores, 1-minute load average {load:.1f} at the end)")
    out.append(f"metatool recall@5: {best:.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tool_retrieval.txt").write_text("\n".join(out) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
