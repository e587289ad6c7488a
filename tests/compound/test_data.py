"""Loaders: our JSONL format (and its errors), and the real public data sets when present."""

import json

import numpy as np
import pytest

from fleetlm.compound.router.data import (default_data_root, load_jsonl, load_llmrouter,
                                          load_routerbench_zs, to_arrays)

ROOT = default_data_root()
needs_data = pytest.mark.skipif(not ROOT.is_dir(), reason=f"routing data not found at {ROOT} "
                                                          "(see ../shared/data/SOURCES.md)")


def _write(path, lines):
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return path


def test_jsonl_costs_and_tokens(tmp_path):
    path = _write(tmp_path / "d.jsonl", [
        {"prompt": "2+2?", "scores": {"a": 1, "b": 0.5}, "costs": {"a": 0.01, "b": 0.001}, "task": "math"},
        "",
        {"prompt": "hi", "scores": {"a": 0, "b": 1}, "tokens": {"a": {"input": 1000, "output": 500},
                                                               "b": {"input": 10, "output": 0}}},
    ])
    prices = {"a": {"input": 2.0, "output": 10.0}, "b": {"input": 1.0, "output": 1.0}}
    ex = load_jsonl(path, prices=prices)
    assert len(ex) == 2 and ex[0].task == "math" and ex[0].scores == {"a": 1.0, "b": 0.5}
    assert ex[1].costs["a"] == pytest.approx((1000 * 2 + 500 * 10) / 1e6)
    arrays = to_arrays(ex)
    assert arrays.models == ["a", "b"] and arrays.scores.shape == (2, 2)


@pytest.mark.parametrize("bad, why", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "JSON object"),
    ({"prompt": "", "scores": {"a": 1}, "costs": {"a": 1}}, "prompt"),
    ({"prompt": "q", "scores": {"a": "high"}, "costs": {"a": 1}}, "finite number"),
    ({"prompt": "q", "scores": {"a": 1}}, '"costs"'),
    ({"prompt": "q", "scores": {"a": 1}, "costs": {"b": 1}}, "different models"),
    ({"prompt": "q", "scores": {"a": 1, "c": 0}, "costs": {"a": 1, "c": 1}}, "differ from the first"),
    ({"prompt": "q", "scores": {"a": 1}, "tokens": {"a": {"input": 1, "output": 1}}}, "needs prices"),
])
def test_jsonl_malformed_line_names_file_and_line(tmp_path, bad, why):
    good = {"prompt": "ok", "scores": {"a": 1}, "costs": {"a": 0.1}}
    path = _write(tmp_path / "bad.jsonl", [good, good, bad])
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: .*{why}"):
        load_jsonl(path)


@needs_data
def test_routerbench_zs_parses_the_real_csvs():
    train, test = load_routerbench_zs("train"), load_routerbench_zs("test")
    assert (len(train), len(test)) == (2225, 953)
    a = to_arrays(test)
    assert len(a.models) == 11 and not np.isnan(a.scores).any()
    gpt4 = a.models.index("gpt-4-1106-preview")
    # The figures SOURCES.md quotes: GPT-4 87.4% for $4.80 in total on the test split.
    assert a.scores[:, gpt4].mean() == pytest.approx(0.874, abs=5e-4)
    assert a.costs[:, gpt4].sum() == pytest.approx(4.80, abs=5e-3)
    assert {ex.task for ex in test} == {"arc-challenge", "mbpp", "winogrande"}
    assert not test[0].prompt.startswith("['")  # the list literal is unwrapped
    # Every model's recorded answer is kept, unwrapped the same way: ARC answers are letters.
    arc = next(ex for ex in test if ex.task == "arc-challenge")
    assert set(arc.responses) == set(a.models)
    assert arc.responses["gpt-4-1106-preview"].strip() in {"A", "B", "C", "D"}


@needs_data
def test_llmrouter_parses_the_real_files():
    train, test = load_llmrouter("train"), load_llmrouter("test")
    assert (len(train), len(test)) == (5608, 500)
    a = to_arrays(train)
    assert len(a.models) == 9 and (a.costs > 0).all()
    assert a.scores.min() >= 0 and a.scores.max() <= 1
    with pytest.raises(ValueError, match="split"):
        load_llmrouter("dev")
