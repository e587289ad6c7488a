"""Arithmetic word problems with step-by-step solutions ending "The answer is N."

Seven problem shapes of two or three steps (+, -, x, exact /) with random names, objects
and numbers. test.jsonl rows carry the question and the expected integer; no test question
occurs in train.jsonl."""

from __future__ import annotations

import random
from pathlib import Path

from fleetlm.tune.datagen.common import chat_row, write_jsonl

INSTRUCTION = "Solve the problem step by step, then give the result as 'The answer is N.'"
NAMES = ["Sam", "Mia", "Leo", "Ava", "Raj", "Zoe", "Ben", "Ivy", "Kai", "Lea", "Omar", "Yuki", "Tom", "Ana", "Eli"]
THINGS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "cards", "books", "eggs"]


def _problem(rng: random.Random) -> tuple[str, str, int]:
    n, t = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.randrange(7)
    if kind == 0:
        a, b = rng.randint(10, 60), rng.randint(5, 40)
        c = rng.randint(1, a + b - 1)
        q = f"{n} has {a} {t}. {n} buys {b} more and then gives {c} to a friend. How many {t} does {n} have now?"
        s, ans = f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}.", a + b - c
    elif kind == 1:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        c = rng.randint(1, a * b - 1)
        q = f"A box holds {a} {t}. {n} buys {b} boxes and loses {c} {t}. How many {t} are left?"
        s, ans = f"{b} x {a} = {a * b}. {a * b} - {c} = {a * b - c}.", a * b - c
    elif kind == 2:
        a, b = rng.randint(5, 20), rng.randint(2, 9)
        c = rng.randint(1, a * b - 1)
        q = f"{n} earns {a} dollars a day for {b} days and then spends {c} dollars. How many dollars are left?"
        s, ans = f"{a} x {b} = {a * b}. {a * b} - {c} = {a * b - c}.", a * b - c
    elif kind == 3:
        b, qt, c = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 15)
        a = b * qt
        q = f"{n} shares {a} {t} equally among {b} friends. Then each friend gets {c} more. How many {t} does each friend have?"
        s, ans = f"{a} / {b} = {qt}. {qt} + {c} = {qt + c}.", qt + c
    elif kind == 4:
        a, b = rng.randint(10, 80), rng.randint(10, 80)
        c = a + b + rng.randint(1, 150)
        q = f"{n} reads {a} pages on Monday and {b} pages on Tuesday. The book has {c} pages. How many pages are left?"
        s, ans = f"{a} + {b} = {a + b}. {c} - {a + b} = {c - a - b}.", c - a - b
    elif kind == 5:
        a, b = rng.randint(3, 12), rng.randint(3, 12)
        c = rng.randint(1, a * b - 1)
        q = f"A hall has {a} rows of {b} chairs. {c} chairs are taken. How many chairs are free?"
        s, ans = f"{a} x {b} = {a * b}. {a * b} - {c} = {a * b - c}.", a * b - c
    else:
        a, b, c = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 20)
        d = rng.randint(1, a * b + c - 1)
        q = (f"{n} buys {a} packs of {b} {t} and {c} loose {t}, then gives away {d}. "
             f"How many {t} does {n} have?")
        s = f"{a} x {b} = {a * b}. {a * b} + {c} = {a * b + c}. {a * b + c} - {d} = {a * b + c - d}."
        ans = a * b + c - d
    return q, f"{s} The answer is {ans}.", ans


def user_text(question: str) -> str:
    return f"{INSTRUCTION}\n\nProblem: {question}"


def generate(out: str | Path, *, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    n_train, n_test = n_train or 320, n_test or 100
    test, seen = [], set()
    while len(test) < n_test:
        q, sol, ans = _problem(rng)
        if q not in seen:
            seen.add(q)
            test.append({"messages": [{"role": "user", "content": user_text(q)}], "expected": ans,
                         "question": q, "solution": sol})
    train = []
    while len(train) < n_train:
        q, sol, _ = _problem(rng)
        if q not in seen:
            seen.add(q)
            train.append(chat_row(None, user_text(q), sol))
    out = Path(out)
    return [write_jsonl(out / "train.jsonl", train), write_jsonl(out / "test.jsonl", test)]
