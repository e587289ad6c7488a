"""Expert data generators (held-out disjoint from training, loadable by the tuner) and the
held-out scorers."""

from __future__ import annotations

import json

import pytest

from fleetlm.tune.data import load_chat_jsonl, tokenize_chat
from fleetlm.tune.datagen import GENERATORS
from fleetlm.tune.evaluate import _prompts, load_test, score_arith, score_extract
from tests.tiny_models import byte_tokenizer


@pytest.mark.parametrize("task", ["extract", "arith"])
def test_sft_data_is_valid_and_held_out_is_unseen(tmp_path, task):
    train, test = GENERATORS[task](tmp_path, n_train=60, n_test=20, seed=3)
    examples = load_chat_jsonl(train)
    assert len(examples) == 60
    rows = load_test(test, None)
    assert len(rows) == 20
    train_users = {e.messages[-2]["content"] for e in examples}
    assert not train_users & {r["messages"][-1]["content"] for r in rows}
    t = tokenize_chat(byte_tokenizer(), examples[0], max_len=4096)
    assert 0 < sum(t.loss_mask) < len(t.input_ids)
    again = GENERATORS[task](tmp_path / "again", n_train=60, n_test=20, seed=3)
    assert again[0].read_text() == train.read_text()  # seeded: the same data every time


def test_solutions_are_right(tmp_path):
    _, test = GENERATORS["arith"](tmp_path, n_train=10, n_test=50, seed=1)
    for r in load_test(test, None):
        assert score_arith(r["solution"], r["expected"])
        for step in r["solution"].split(". ")[:-1]:  # every "a op b = c" step holds
            lhs, rhs = step.rstrip(".").split(" = ")
            assert eval(lhs.replace("x", "*").replace("/", "//")) == int(rhs)


def test_persona_queries(tmp_path):
    from fleetlm.tune.datagen.persona import GREETINGS

    prompt, train, held = GENERATORS["persona"](tmp_path, seed=0)
    assert len(prompt.read_text().split()) > 1500  # 2,761 Gemma tokens (printed by the README run)
    q_train = {json.loads(x)["query"] for x in train.read_text().splitlines()}
    q_held = {json.loads(x)["query"] for x in held.read_text().splitlines()}
    assert q_train and q_held and not q_train & q_held
    assert all(q.startswith("Customer: ") and q.endswith("\nPip:") for q in q_train | q_held)
    strip = [g for g in GREETINGS if g]

    def pair(q: str) -> str:  # the question without its greeting, case-folded
        body = q.removeprefix("Customer: ")
        for g in strip:
            body = body.removeprefix(g)
        return body.lower()

    assert not {pair(q) for q in q_train} & {pair(q) for q in q_held}  # split by pair, not by string
    # The prompt's example replies never ask a held-out question: the teacher answers them as new.
    asked = {pair(line) for line in prompt.read_text().splitlines() if line.startswith("Customer: ")}
    assert len(asked) >= 40 and not asked & {pair(q.removesuffix("\nPip:")) for q in q_held}
    assert len(q_train) > 3 * len(q_held)


def test_scorers():
    exp = {"name": "Ana Silva", "age": 31, "city": "Porto", "job": "baker"}
    assert score_extract('{"name": "Ana Silva", "age": 31, "city": "Porto", "job": "baker"} trailing', exp)
    assert not score_extract('{"name": "Ana Silva", "age": "31", "city": "Porto", "job": "baker"}', exp)
    assert not score_extract("no json here", exp)
    assert score_arith("3 x 4 = 12. 12 - 2 = 10. The answer is 10.", 10)
    assert not score_arith("The answer is 11.", 10)
    assert score_arith("so 10", 10)


def test_base_prompts_carry_the_shots(tmp_path):
    train, test = GENERATORS["extract"](tmp_path, n_train=5, n_test=2, seed=0)
    shots = [{"messages": e.messages} for e in load_chat_jsonl(train)[:2]]
    tok = byte_tokenizer()
    p = _prompts(tok, load_test(test, None), shots)
    text = tok.decode(p["few_shot_text"][0])
    assert text.count("\nAnswer: {") == 2 and text.endswith("\nAnswer:")
    assert tok.decode(p["few_shot_chat"][0]).count("[assistant] {") == 2
