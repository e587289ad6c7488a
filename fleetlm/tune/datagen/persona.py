"""Customer queries for the bookshop persona (prompt: ``persona_prompt.txt``, 2,761 Gemma tokens).

Queries are template x value pairs, each asked with one of a few greetings and written as
``"Customer: <greeting><question>\\nPip:"`` for ``fleet tune distill --format text --stop
"\\n"``. The split is by pair: a held-out query's (template, value) pair is never seen in
training under any greeting (each template and each value does appear in training, in other
pairs); training takes every greeting of its pairs, held-out one greeting per pair.

The prompt is the shop guide plus 46 example replies (at least one per topic, worded unlike the
query templates; a test checks that no held-out question is among them). With only five
examples the 270M teacher was inconsistent with itself: asked the same question under the five
greetings, 23% of queries got a greedy answer other than their pair's most common one (16%
with the 46 examples), and a student cannot agree with a teacher more often than the teacher
agrees with itself."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from fleetlm.tune.datagen.common import write_jsonl

PROMPT_FILE = Path(__file__).with_name("persona_prompt.txt")

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ITEMS = ["a coffee", "a tea", "a hot chocolate", "a slice of lemon cake", "the fish pie", "a sea chart",
         "a map of the coast", "a notebook", "a second-hand book", "a new paperback", "a hardback",
         "a picture book", "a gift card"]
NOT_SOLD = ["e-books", "audiobooks", "magazines", "school textbooks", "newspapers", "comics", "vinyl records",
            "board games", "greeting cards", "university textbooks"]
EVENTS = ["story time", "the Lantern Hour", "the book club", "the poetry evening"]
SERVICES = ["special orders", "gift wrapping", "delivery", "holding a book for me", "buying my old books",
            "finding a book I half remember"]
PEOPLE = ["Marta", "Jonas", "Ada"]
OFF_TOPIC = ["the weather tomorrow", "the football score", "a good doctor", "the train times", "the election",
             "a lawyer", "the tide tables", "a hotel nearby", "the best restaurant in town"]

TEMPLATES = [
    ("Are you open on {}?", DAYS), ("What are your hours on {}?", DAYS), ("When do you close on {}?", DAYS),
    ("Can I come by on {} morning?", DAYS), ("Is the cafe open on {}?", DAYS),
    ("How much is {}?", ITEMS), ("What does {} cost?", ITEMS), ("Can I buy {} with a card?", ITEMS),
    ("Do you have {} today?", ITEMS),
    ("Do you sell {}?", NOT_SOLD), ("Can I find {} in your shop?", NOT_SOLD), ("Where are the {}?", NOT_SOLD),
    ("When is {}?", EVENTS), ("Is {} free?", EVENTS), ("Can my friend join {}?", EVENTS),
    ("Do you offer {}?", SERVICES), ("How does {} work?", SERVICES), ("Is {} free of charge?", SERVICES),
    ("Who is {}?", PEOPLE), ("Can I talk to {}?", PEOPLE), ("What does {} do at the shop?", PEOPLE),
    ("Can you tell me about {}?", OFF_TOPIC), ("Do you know anything about {}?", OFF_TOPIC),
]


GREETINGS = ["", "Hi! ", "Hello, ", "Good morning! ", "Excuse me, "]


def query(template: str, value: str, greeting: str = "") -> str:
    question = template.format(value)
    if greeting.endswith(", "):  # "Excuse me, are you open ...": the question goes on mid-sentence
        question = question[0].lower() + question[1:]
    return f"Customer: {greeting}{question}\nPip:"


def all_pairs() -> list[tuple[str, str]]:
    return [(t, v) for t, values in TEMPLATES for v in values]


def generate(out: str | Path, *, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> list[Path]:
    out = Path(out)
    rng = random.Random(seed)
    pairs = all_pairs()
    rng.shuffle(pairs)
    n_test = n_test or 40
    test = [query(t, v, rng.choice(GREETINGS)) for t, v in pairs[:n_test]]
    train = [query(t, v, g) for t, v in pairs[n_test:] for g in GREETINGS]
    rng.shuffle(train)
    train = train[:n_train] if n_train else train
    out.mkdir(parents=True, exist_ok=True)
    prompt = shutil.copyfile(PROMPT_FILE, out / "system_prompt.txt")
    return [Path(prompt), write_jsonl(out / "queries.jsonl", [{"query": q} for q in train]),
            write_jsonl(out / "eval_queries.jsonl", [{"query": q} for q in test])]
