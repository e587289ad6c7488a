"""Structured extraction: a person's details in free text -> one compact JSON object.

Each example: a sentence or two (one of many templates, sometimes with a distracting second
person or place) holding a name, an age, a city and a job; the answer is
``{"name": ..., "age": <int>, "city": ..., "job": ...}``. test.jsonl rows carry the user
text and the expected object; its (name, city) pairs never occur in train.jsonl."""

from __future__ import annotations

import json
import random
from pathlib import Path

from fleetlm.tune.datagen.common import chat_row, write_jsonl

INSTRUCTION = "Extract the person's name, age, city and job as JSON with keys name, age, city, job."

FIRST = ["Maria", "James", "Aisha", "Kenji", "Sofia", "Liam", "Chen", "Olga", "Diego", "Fatima", "Noah", "Priya",
         "Lucas", "Emma", "Omar", "Hana", "Mateo", "Zara", "Ivan", "Grace", "Tomas", "Leila", "Arjun", "Nina",
         "Kwame", "Elena", "Yusuf", "Clara", "Hiro", "Amara"]
LAST = ["Lopez", "Smith", "Khan", "Tanaka", "Rossi", "Murphy", "Wang", "Petrova", "Garcia", "Haddad", "Brown",
        "Patel", "Silva", "Muller", "Farouk", "Kim", "Torres", "Ahmed", "Novak", "Okafor", "Berg", "Costa",
        "Singh", "Dubois", "Mensah", "Ivanova", "Demir", "Larsen", "Sato", "Eze"]
CITIES = ["Denver", "Lisbon", "Osaka", "Nairobi", "Toronto", "Hamburg", "Lima", "Krakow", "Austin", "Lyon",
          "Seoul", "Cairo", "Dublin", "Perth", "Bogota", "Oslo", "Mumbai", "Porto", "Boston", "Accra", "Milan",
          "Quito", "Tallinn", "Busan"]
JOBS = ["nurse", "teacher", "plumber", "software engineer", "baker", "pilot", "accountant", "chef", "architect",
        "electrician", "journalist", "dentist", "farmer", "librarian", "photographer", "mechanic", "lawyer",
        "pharmacist", "carpenter", "designer"]

TEMPLATES = [
    "Hi, I'm {name}, {age}, and I work as a {job} in {city}.",
    "{name} is a {age}-year-old {job} who lives in {city}.",
    "My name is {name}. I am {age} years old, I live in {city} and I'm a {job}.",
    "Meet {name} ({age}), a {job} based in {city}.",
    "{name}, a {job} from {city}, turned {age} last month.",
    "After years abroad, {name} moved back to {city}, where the {age}-year-old now works as a {job}.",
    "New member: {name}. Age: {age}. Occupation: {job}. Home town: {city}.",
    "Our {job} this week is {name}, {age}, who commutes every day in {city}.",
    "{name} ({job}, {age}) says {city} is the best place to live.",
    "I'd like you to meet {name}. The {job} is {age} and lives in {city}.",
]
DISTRACTORS = [
    " Her brother {oname} lives in {ocity}.", " {oname}, a friend from {ocity}, visited last week.",
    " Next year they plan a trip to {ocity}.", " They met {oname} at a conference in {ocity}.",
]


def _example(rng: random.Random, name: str, city: str) -> tuple[str, dict]:
    age, job = rng.randint(19, 78), rng.choice(JOBS)
    text = rng.choice(TEMPLATES).format(name=name, age=age, job=job, city=city)
    if rng.random() < 0.4:
        other = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        text += rng.choice(DISTRACTORS).format(oname=other, ocity=rng.choice([c for c in CITIES if c != city]))
    return text, {"name": name, "age": age, "city": city, "job": job}


def user_text(text: str) -> str:
    return f"{INSTRUCTION}\n\nText: {text}"


def answer_text(obj: dict) -> str:
    return json.dumps(obj, separators=(", ", ": "))


def generate(out: str | Path, *, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    n_train, n_test = n_train or 320, n_test or 100
    pairs = [(f"{f} {l}", c) for f in FIRST for l in LAST for c in CITIES]
    rng.shuffle(pairs)
    test_pairs, train_pairs = pairs[:n_test], pairs[n_test:n_test + n_train]
    train, test = [], []
    for name, city in train_pairs:
        text, obj = _example(rng, name, city)
        train.append(chat_row(None, user_text(text), answer_text(obj)))
    for name, city in test_pairs:
        text, obj = _example(rng, name, city)
        test.append({"messages": [{"role": "user", "content": user_text(text)}], "expected": obj, "text": text})
    out = Path(out)
    return [write_jsonl(out / "train.jsonl", train), write_jsonl(out / "test.jsonl", test)]
