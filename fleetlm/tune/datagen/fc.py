"""Function-calling SFT data, generated from tool specs that are not BFCL's.

    python -m fleetlm.tune.datagen.fc --out experts/fc/data/train.jsonl --n 2400 --seed 0

Sources (BFCL questions, answers and functions are never read):

* the templated python-style functions of :mod:`fleetlm.tune.datagen.fc_specs` and
  :mod:`~fleetlm.tune.datagen.fc_specs_more` (typed
  parameters: ints, floats, strings, enums, arrays, an object; optional ones with defaults);
* NESTFUL's tool specs (``nestful/*-spec.json``): parameters and descriptions only, values
  drawn by type and name, questions from generic templates; glaive names are rewritten in
  camelCase and dotted SGD names with ``_`` so no name is shared with other benchmarks;
* MetaTool's plugin descriptions (``metatool/plugin_des.json``), as distractor tools only;
* with ``--modifier-specs``, :mod:`~fleetlm.tune.datagen.fc_specs_modifiers`: functions whose
  optional parameters the question sets in passing ("a *small* beetle", "*two* tickets").
  ``--optional-rate`` is how often an optional slot of a template is filled (default 0.4).

Each row is OpenAI chat JSONL for ``fleet tune sft`` (``{"messages", "tools"}``), one of five
kinds (shares in :data:`MIX`): ``simple`` (one tool, one call), ``multiple`` (2-4 tools, one
call; 60% with look-alike distractors), ``parallel`` (2-3 calls of one function),
``parallel_multiple`` (calls of different functions) and ``irrelevance`` (no tool fits: the
assistant answers in text). Argument values are copied from the question, or put in the form
the parameter's description asks for (``fc_values.Said``: "5%" -> 0.05, "Austin" -> "Austin,
TX", "March 3, 2025" -> "2025-03-03"); optional parameters appear only when the question sets
them. Every gold call is checked against its tool's schema with jsonschema before it is
written. Without the public data folder only the templated functions are used (a note goes to
stderr).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from fleetlm.config import shared_data
from fleetlm.tune.datagen import fc_specs, fc_specs_modifiers, fc_specs_more
from fleetlm.tune.datagen.common import write_jsonl
from fleetlm.tune.datagen.fc_specs import Spec
from fleetlm.tune.datagen.fc_values import CITIES, LANGS, PEOPLE, TOPICS, date, gold, say

SPECS = fc_specs.SPECS + fc_specs_more.SPECS  # every templated function

MIX = {"simple": 0.26, "multiple": 0.32, "parallel": 0.12, "parallel_multiple": 0.10, "irrelevance": 0.20}
HARD_DISTRACTORS = 0.6  # share of `multiple` examples whose other tools resemble the right one
REFUSALS = ["None of the available functions can do that.",
            "I can't help with that using the tools I have.",
            "Sorry, none of the provided functions fits this request.",
            "The available tools cannot answer this question."]
CHITCHAT = ["Who wrote the novel Don Quixote?", "Tell me a joke about cats.", "What is the capital of Australia?",
            "How do I improve my sleep?", "Write a haiku about autumn.", "Why is the sky blue?",
            "What's a good name for a puppy?", "Explain what photosynthesis is in one sentence.",
            "Can you recommend a board game for four players?", "How many legs does a spider have?"]
SYSTEMS = ["You are a helpful assistant.", "You are an assistant that can call functions.",
           "Answer the user's request. Use the tools when they help."]


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict


@dataclass(frozen=True)
class Source:
    """A tool plus a way to ask for it: sample(rng) -> (question, gold arguments)."""

    tool: dict
    sample: object
    domain: str

    @property
    def name(self) -> str:
        return self.tool["function"]["name"]


def data_root() -> Path:
    return shared_data("function_calling")


# ---------- the templated functions ----------

OPTIONAL_RATE = 0.4  # how often a template's optional slot is filled (and the gold call holds it)


def own_source(spec: Spec, optional_rate: float = OPTIONAL_RATE) -> Source:
    def sample(r: random.Random) -> tuple[str, dict]:
        template = r.choice(spec.templates)
        fill, args = {}, {}
        for p in spec.params:
            value = p.draw(r)
            if p.required:
                fill[p.name] = {k: say(v) for k, v in value.items()} if isinstance(value, dict) else say(value)
                args[p.name] = gold(value)
            elif "{" + p.name + "?}" in template and r.random() < optional_rate:
                fill[p.name + "?"] = p.phrase.format(v=say(value))
                args[p.name] = gold(value)
            else:
                fill[p.name + "?"] = ""
        return template.format(**fill), args
    return Source(spec.tool(), sample, spec.domain)


# ---------- NESTFUL specs with generic questions ----------

_POOLS = [("city|location|origin|destination|place|area|address", CITIES), ("language", LANGS),
          ("name|artist|author|person|user", PEOPLE), ("query|keyword|text|topic|title|term|subject", TOPICS)]
_TYPES = {"string": "string", "number": "number", "integer": "integer", "boolean": "boolean", "array": "array",
          "object": "object", "enum": "string", "date (yyyy-mm-dd)": "string"}


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text or "").split())
    first = re.split(r"(?<=[.!?])\s", text)[0]
    return (first if len(first) <= limit else first[:limit].rsplit(" ", 1)[0]).rstrip(".")


def _value(name: str, schema: dict, r: random.Random):
    kind, low = schema.get("type", "string"), name.lower()
    if "enum" in schema:
        return r.choice(schema["enum"])
    if kind == "integer" or (kind == "number" and r.random() < 0.7):
        return r.randint(1, 60) if re.search("count|num|limit|size|page|adult|people|guest", low) else r.randint(1, 500)
    if kind == "number":
        return round(r.uniform(1, 500), 2)
    if kind == "boolean":
        return r.random() < 0.5
    if kind == "array":
        return [_value(name, schema.get("items", {"type": "string"}), r) for _ in range(r.randint(1, 3))]
    if "date" in low:
        return date(r)
    for pattern, pool in _POOLS:
        if re.search(pattern, low):
            return r.choice(pool)
    return r.choice(["alpha", "blue", "premium", "north", "daily", "summer", "basic", "gold", "river", "classic"])


def _human(name: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").lower()


def nestful_sources(root: Path) -> list[Source]:
    out, seen = [], set()
    for kind in ("executable", "non-executable-glaive", "non-executable-sgd"):
        for spec in json.loads((root / "nestful" / f"{kind}-spec.json").read_text()):
            name = spec["name"]
            name = (re.sub(r"_([a-zA-Z])", lambda m: m.group(1).upper(), name) if kind.endswith("glaive")
                    else re.sub(r"[^A-Za-z0-9_-]", "_", name))
            raw = spec.get("query_parameters") or spec.get("parameters") or spec.get("arguments") or {}
            if name in seen or not isinstance(raw, dict) or not raw or "properties" in raw:
                continue  # duplicate names; glaive's few JSON-schema-shaped specs are skipped
            seen.add(name)
            props, req = {}, []
            for pname, p in list(raw.items())[:8]:
                schema = {"type": _TYPES.get(str(p.get("type", "string")).lower(), "string"),
                          "description": _short(p.get("description") or _human(pname), 80)}
                values = p.get("enum") or p.get("allowed_values")
                if values and schema["type"] == "string":
                    schema["enum"] = [str(v) for v in values]
                if schema["type"] == "array":
                    schema["items"] = {"type": "string"}
                if schema["type"] == "object":
                    continue
                props[pname] = schema
                if p.get("required") is True:
                    req.append(pname)
            tool = {"type": "function", "function": {"name": name, "description": _short(spec["description"], 120),
                                                     "parameters": {"type": "object", "properties": props,
                                                                    "required": req}}}
            out.append(Source(tool, _nestful_sampler(tool), "nestful"))
    return out


def _nestful_sampler(tool: dict):
    fn = tool["function"]
    props, req = fn["parameters"]["properties"], fn["parameters"]["required"]
    intro = fn["description"][:1].lower() + fn["description"][1:]

    def sample(r: random.Random) -> tuple[str, dict]:
        args = {k: _value(k, s, r) for k, s in props.items() if k in req or r.random() < 0.25}
        parts = [f"the {_human(k)} is {say(v) if not isinstance(v, str) else v}" for k, v in args.items()]
        lead = r.choice(["I need to {}.", "Please {}.", "Can you {}?", "Help me {}."]).format(intro)
        if not parts:
            return lead, args
        detail = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
        return f"{lead} {detail[0].upper()}{detail[1:]}.", args
    return sample


def metatool_tools(root: Path) -> list[dict]:
    des = json.loads((root / "metatool" / "plugin_des.json").read_text())
    return [{"type": "function", "function": {
        "name": f"{re.sub(r'[^A-Za-z0-9_]', '_', name)}_plugin", "description": _short(text, 120),
        "parameters": {"type": "object", "properties": {"request": {"type": "string", "description": "What to ask"}},
                       "required": ["request"]}}} for name, text in des.items()]


# ---------- examples ----------

def _join(questions: list[str], r: random.Random) -> str:
    style = r.randrange(3)
    if style == 0:
        return " ".join([questions[0]] + [f"Also, {q[0].lower()}{q[1:]}" for q in questions[1:]])
    if style == 1:
        return " ".join(f"{i}) {q}" for i, q in enumerate(questions, 1))
    return "I have a few requests. " + " Then: ".join(questions)


def _row(question: str, tools: list[dict], calls: list[Call] | None, text: str | None, r: random.Random) -> dict:
    msgs = [{"role": "system", "content": r.choice(SYSTEMS)}] if r.random() < 0.15 else []
    msgs.append({"role": "user", "content": question})
    if calls:
        msgs.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {
                "name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False, separators=(",", ":"))}}
            for i, c in enumerate(calls)]})
    else:
        msgs.append({"role": "assistant", "content": text})
    r.shuffle(tools)
    return {"messages": msgs, "tools": tools}


def _words(name: str) -> set[str]:
    return {w.lower() for w in re.split(r"[._]|(?<=[a-z])(?=[A-Z])", name) if len(w) > 2}


def _near(main: Source, sources: list[Source], k: int, r: random.Random) -> list[dict]:
    """k distractor tools that resemble `main`: same domain or a shared word in the name
    (``triangle_area_heron`` vs ``triangle_area_base``), so the model has to read the
    descriptions and the question rather than pick the only tool on topic."""
    words = _words(main.name)
    scored = [(2 * (s.domain == main.domain) + len(words & _words(s.name)), r.random(), s)
              for s in sources if s.name != main.name]
    scored.sort(key=lambda x: (-x[0], x[1]))
    return [s.tool for _, _, s in scored[:k]]


def make_example(kind: str, own: list[Source], nestful: list[Source], distract: list[dict],
                 r: random.Random) -> dict:
    pool = own + nestful if nestful and r.random() < 0.3 else own
    main = r.choice(pool)
    others = [t for t in [s.tool for s in own + nestful] + distract if t["function"]["name"] != main.name]
    n_extra = {"simple": 0, "parallel": r.choice([0, 0, 1]), "irrelevance": 0}.get(kind, r.randint(1, 3))
    if kind == "multiple" and r.random() < HARD_DISTRACTORS:
        tools = [main.tool] + _near(main, own + nestful, n_extra, r)
    else:
        tools = [main.tool] + r.sample(others, n_extra)
    if kind in ("simple", "multiple"):
        q, a = main.sample(r)
        return _row(q, tools, [Call(main.name, a)], None, r)
    if kind == "parallel":
        pairs = [main.sample(r) for _ in range(r.choice([2, 2, 3]))]
        return _row(_join([q for q, _ in pairs], r), tools, [Call(main.name, a) for _, a in pairs], None, r)
    if kind == "parallel_multiple":
        second = r.choice([s for s in own if s.name != main.name])
        tools = [main.tool, second.tool] + r.sample([t for t in others if t["function"]["name"] != second.name],
                                                    r.randint(0, 2))
        picks = [main, second] + ([main] if r.random() < 0.3 else [])
        pairs = [(s.name, s.sample(r)) for s in picks]
        return _row(_join([q for _, (q, _) in pairs], r), tools, [Call(n, a) for n, (_, a) in pairs], None, r)
    if kind == "irrelevance":
        asked = r.choice(own)
        unrelated = [s.tool for s in own if s.domain != asked.domain] + distract
        tools = r.sample(unrelated, r.randint(1, 3))
        question = asked.sample(r)[0] if r.random() < 0.7 else r.choice(CHITCHAT)
        return _row(question, tools, None, r.choice(REFUSALS), r)
    raise ValueError(f"unknown example kind {kind!r}; expected one of {sorted(MIX)}")


def generate_rows(n: int, seed: int, root: Path | None = None, *, modifier_specs: bool = False,
                  optional_rate: float = OPTIONAL_RATE) -> list[dict]:
    """n examples, deterministic for (n, seed, the options, the data present); see the module
    doc. `modifier_specs` adds :mod:`fc_specs_modifiers` (optionals said in passing)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= optional_rate <= 1:
        raise ValueError(f"optional_rate must be in [0, 1], got {optional_rate}")
    import jsonschema

    root = data_root() if root is None else Path(root)
    specs = SPECS + (fc_specs_modifiers.SPECS if modifier_specs else [])
    own = [own_source(s, optional_rate) for s in specs]
    if (root / "nestful").is_dir() and (root / "metatool").is_dir():
        nestful, distract = nestful_sources(root), metatool_tools(root)
    else:
        print(f"note: {root} not found; using only the templated functions", file=sys.stderr)
        nestful, distract = [], []
    r = random.Random(seed)
    kinds = list(MIX)
    rows = []
    for _ in range(n):
        row = make_example(r.choices(kinds, weights=[MIX[k] for k in kinds])[0], own, nestful, distract, r)
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in row["tools"]}
        for call in row["messages"][-1].get("tool_calls") or []:
            jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="chat JSONL file to write")
    ap.add_argument("--n", type=int, default=2400, help="number of examples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None, help="function_calling data folder (default ../shared/data/...)")
    ap.add_argument("--modifier-specs", action="store_true",
                    help="add the functions whose optionals are said in passing (fc_specs_modifiers)")
    ap.add_argument("--optional-rate", type=float, default=OPTIONAL_RATE,
                    help="how often a question sets an optional parameter its template can mention")
    args = ap.parse_args(argv)
    try:
        rows = generate_rows(args.n, args.seed, Path(args.data_root) if args.data_root else None,
                             modifier_specs=args.modifier_specs, optional_rate=args.optional_rate)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(write_jsonl(Path(args.out), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
