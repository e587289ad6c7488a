"""Tool retrieval: BM25, signal fusion, learning from examples, the embedding cache, budgets.

Fast tests use a bag-of-words encoder (hashed, normalised) in place of MiniLM; the MetaTool
target runs on the real model and data (slow, skipped without the data)."""

import hashlib

import numpy as np
import pytest

from fleetlm.compound.tools.retrieval import (
    BM25,
    LEARNED_WEIGHTS,
    RetrievalWeights,
    ToolRetriever,
    approx_tokens,
    select_tools,
    tokenize,
    tool_text,
)


def bow_encoder(calls=None, dim=256):
    def encode(texts):
        if calls is not None:
            calls.append(list(texts))
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in tokenize(t):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % dim] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)
    return encode


def tool(name, description, **params):
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {p: {"type": "string", "description": d} for p, d in params.items()}}}}


TOOLS = [tool("get_weather", "Current weather and forecast for a city.", city="City name"),
         tool("StockQuote", "Latest share price of a listed company.", ticker="Exchange ticker symbol"),
         tool("send_email", "Send an email message to a recipient.", to="Address"),
         tool("translate", "Translate text between languages.")]


def test_tokenize_and_tool_text():
    assert tokenize("getStockQuote for HTTPServer v2") == ["stock", "quote", "http", "server", "v", "2"]
    text = tool_text(TOOLS[1])
    assert text.startswith("Stock Quote: Latest share price") and "ticker (Exchange ticker symbol)" in text
    with pytest.raises(ValueError, match="function.name"):
        tool_text({"type": "function", "function": {"description": "no name"}})


def test_bm25_prefers_rare_matching_terms():
    bm = BM25([["weather", "city"], ["price", "company", "city"], ["email"]])
    s = bm.scores(["weather", "city"])
    assert s[0] > s[1] > s[2] == 0
    assert bm.scores(["unknown"]).tolist() == [0, 0, 0]


def test_lexical_and_dense_rankings():
    lexical = ToolRetriever()  # no encoder: BM25 only
    assert lexical.rank("what is the weather forecast in Paris", TOOLS)[0] == 0
    dense = ToolRetriever(bow_encoder(), weights=RetrievalWeights(dense=1.0, lexical=0.3))
    assert dense.rank("translate this text to German", TOOLS)[0] == 3
    assert dense.top_k("share price of ACME", TOOLS, 2)[0] is TOOLS[1]
    assert dense.rank("x", []) == []


def test_examples_teach_what_descriptions_miss():
    query = "should I buy ACME now"  # shares no word with any description
    weights = RetrievalWeights(dense=0.2, knn=1.0, centroid=0.5, knn_m=2)
    r = ToolRetriever(bow_encoder(), weights=weights)
    assert r.rank(query, TOOLS)[0] != 1
    r.fit(["should I buy Tesla", "is ACME a buy", "buy or sell Apple now"],
          [["StockQuote"], ["StockQuote"], ["StockQuote", "get_weather"]])
    assert r.rank(query, TOOLS)[0] == 1
    # a tool the examples never name keeps its description score for the learned signals
    sig = r.signals("email a recipient", TOOLS)
    assert sig["knn"][2] == pytest.approx(sig["dense"][2])
    with pytest.raises(ValueError, match="as many label lists"):
        r.fit(["q"], [])


def test_tool_embeddings_are_cached_by_content():
    calls = []
    r = ToolRetriever(bow_encoder(calls))
    r.rank("weather", TOOLS)
    r.rank("email", TOOLS[::-1])
    assert [len(c) for c in calls] == [1, 4, 1]  # query, tools once, query
    changed = [tool("translate", "Translate text, now with 40 languages.")]
    r.rank("x", TOOLS + changed)
    assert calls[-1] == [tool_text(changed[0])]


def test_select_tools_budgets():
    r = ToolRetriever(bow_encoder())
    assert select_tools("weather", TOOLS) == TOOLS
    assert select_tools("weather", TOOLS, max_tools=4) == TOOLS
    two = select_tools("email the weather forecast", TOOLS, max_tools=2, retriever=r)
    assert two == [TOOLS[0], TOOLS[2]]  # best two, in their input order
    kept = select_tools("weather", TOOLS, max_tools=2, retriever=r, keep=("translate",))
    assert TOOLS[3] in kept and TOOLS[0] in kept and len(kept) == 2
    budget = approx_tokens(TOOLS[0]) + approx_tokens(TOOLS[3])
    by_tokens = select_tools("weather and translation", TOOLS, max_prompt_tokens=budget, retriever=r)
    assert by_tokens == [TOOLS[0], TOOLS[3]]
    assert sum(map(approx_tokens, by_tokens)) <= budget
    with pytest.raises(ValueError, match="max_tools"):
        select_tools("q", TOOLS, max_tools=0)
    with pytest.raises(ValueError, match="keep names"):
        select_tools("q", TOOLS, max_tools=1, keep=("nope",))


@pytest.mark.slow
def test_metatool_target_on_a_slice_of_the_split():
    """The retrieval target on a slice: learn from 4,000 single-tool + all two-tool queries of the
    training half, score 300 single-tool and every two-tool query of the test half (the full
    run is benchmarks/tool_retrieval.py). Real MiniLM; about 4,800 embeddings."""
    import csv
    import json

    from fleetlm.compound.tools.retrieval import minilm_encoder
    from fleetlm.evals.bfcl import default_root

    root = default_root().parent / "metatool"
    if not root.is_dir():
        pytest.skip(f"MetaTool data not found at {root} (see ../shared/data/SOURCES.md)")
    desc = json.loads((root / "plugin_des.json").read_text())
    tools = [{"type": "function", "function": {"name": n, "description": d}} for n, d in desc.items()]
    with open(root / "all_clean_data.csv", newline="") as f:
        single = [(r["Query"], [r["Tool"]]) for r in csv.DictReader(f)]
    two = [(r["query"], r["tool"]) for r in json.loads((root / "multi_tool_query_golden.json").read_text())]
    rng = np.random.default_rng(0)  # the benchmark's split
    halves = []
    for rows in (single, two):
        p = rng.permutation(len(rows))
        halves.append(([rows[i] for i in p[: len(p) // 2]], [rows[i] for i in p[len(p) // 2:]]))
    (s_train, s_test), (t_train, t_test) = halves
    train = s_train[:4000] + t_train
    r = ToolRetriever(minilm_encoder(), weights=LEARNED_WEIGHTS).fit([q for q, _ in train], [g for _, g in train])
    names = [t["function"]["name"] for t in tools]

    def all_in_top5(query, gold):
        top = r.rank(query, tools)[:5]
        return all(names.index(g) in top for g in gold)

    single_r5 = np.mean([all_in_top5(q, g) for q, g in s_test[:300]])
    two_all5 = np.mean([all_in_top5(q, g) for q, g in t_test])
    assert single_r5 >= 0.90 and two_all5 >= 0.70, (single_r5, two_all5)
