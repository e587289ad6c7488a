"""Programmatic data for the shipped experts: templates + random values, never benchmark
sets. Each generator writes its files into a folder and returns their paths:

* ``extract``: chat JSONL for ``fleet tune sft`` (train.jsonl) and a held-out test.jsonl with
  the expected JSON object per line: contact details in free text -> one JSON object;
* ``arith``: chat JSONL of arithmetic word problems solved step by step, test.jsonl with the
  expected final number;
* ``persona``: a 1,400-token system prompt (the Harbor Lantern Bookshop's assistant, Pip) and
  train / held-out customer queries for ``fleet tune distill --format text``.
"""

from __future__ import annotations

from fleetlm.tune.datagen.arith import generate as _arith
from fleetlm.tune.datagen.extract import generate as _extract
from fleetlm.tune.datagen.persona import generate as _persona

GENERATORS = {"extract": _extract, "arith": _arith, "persona": _persona}
