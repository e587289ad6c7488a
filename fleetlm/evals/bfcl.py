"""BFCL v4 questions → OpenAI chat requests, and OpenAI responses → BFCL-shaped calls.

Data: ``BFCL_v4_<category>.json`` (JSON lines: ``id``, ``question`` = list of turns, each a
list of messages, ``function`` = BFCL function docs) and ``possible_answer/`` (same file name,
``ground_truth``), read from ``<repo>/../shared/data/function_calling/bfcl`` unless a root is
given. ``multi_turn_*`` questions carry no ``function``: their docs come from
``multi_turn_func_doc/`` by ``involved_classes`` (loaded and converted here; scoring them
needs BFCL's simulated APIs, which this project does not have).

BFCL docs are not JSON schema; :func:`to_openai_tools` converts them: ``dict`` → ``object``,
``float`` → ``number``, ``tuple`` → ``array``, ``any`` → no type constraint, BFCL's Java/JS type
names as BFCL maps them, non-schema keys (``optional``, ``format``) dropped. Function names may
hold dots, which OpenAI's ``^[a-zA-Z0-9_-]{1,64}$`` forbids: each name is mapped to a legal one,
unique within the question, and :attr:`ToolSet.to_bfcl` maps the model's names back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from fleetlm.config import shared_data

SINGLE_TURN_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
                          "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
                          "live_irrelevance", "live_relevance")
MULTI_TURN_DOCS = {"GorillaFileSystem": "gorilla_file_system", "MathAPI": "math_api",
                   "MessageAPI": "message_api", "TwitterAPI": "posting_api", "TicketAPI": "ticket_api",
                   "TradingBot": "trading_bot", "TravelAPI": "travel_booking",
                   "VehicleControlAPI": "vehicle_control"}

# BFCL type name -> JSON-schema type (None: no constraint). Mirrors BFCL's GORILLA_TO_OPENAPI,
# except "any", which BFCL sends as "string" and we leave unconstrained.
_TYPES: dict[str, str | None] = {
    "string": "string", "integer": "integer", "number": "number", "float": "number",
    "boolean": "boolean", "bool": "boolean", "array": "array", "list": "array", "tuple": "array",
    "dict": "object", "object": "object", "any": None, "Any": None, "byte": "integer",
    "short": "integer", "long": "integer", "double": "number", "char": "string", "String": "string",
    "Bigint": "integer", "ArrayList": "array", "Array": "array", "Queue": "array", "Stack": "array",
    "HashMap": "object", "Hashtable": "object", "null": "null"}
# Schema keywords carried over as they are; everything else (BFCL's "optional", "format"
# strings no grammar knows) is dropped.
_KEEP = ("description", "enum", "default", "minimum", "maximum", "minItems", "maxItems")
_ILLEGAL = re.compile(r"[^a-zA-Z0-9_-]")


def default_root() -> Path:
    """``shared_data("function_calling", "bfcl")``."""
    return shared_data("function_calling", "bfcl")


@dataclass
class Question:
    id: str
    category: str
    turns: list[list[dict]]  # BFCL "question": one list of chat messages per user turn
    functions: list[dict]  # BFCL function docs offered to the model
    ground_truth: list | None  # possible_answer's "ground_truth"; None where BFCL has none


def load_category(category: str, root: Path | None = None, *, limit: int | None = None) -> list[Question]:
    """The questions of one category, in file order, with their answers attached."""
    root = Path(root) if root is not None else default_root()
    path = root / f"BFCL_v4_{category}.json"
    if not path.is_file():
        found = ", ".join(available_categories(root)) or "none"
        raise FileNotFoundError(f"no BFCL category {category!r} at {path} (found: {found})")
    answers = {}
    answer_path = root / "possible_answer" / path.name
    if answer_path.is_file():
        answers = {row["id"]: row["ground_truth"] for row in _jsonl(answer_path)}
    questions = []
    for row in _jsonl(path):
        functions = row.get("function")
        if functions is None:
            functions = _multi_turn_docs(root, row.get("involved_classes", []))
        questions.append(Question(row["id"], category, row["question"], functions, answers.get(row["id"])))
        if limit is not None and len(questions) >= limit:
            break
    if not any(q.ground_truth is not None for q in questions) and "irrelevance" not in category:
        raise ValueError(f"no answers for {category!r} under {root / 'possible_answer'}")
    return questions


def available_categories(root: Path | None = None) -> list[str]:
    root = Path(root) if root is not None else default_root()
    return sorted(p.name[len("BFCL_v4_"):-len(".json")] for p in root.glob("BFCL_v4_*.json"))


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e}") from e
    return rows


def _multi_turn_docs(root: Path, classes: list[str]) -> list[dict]:
    docs = []
    for cls in classes:
        if cls not in MULTI_TURN_DOCS:
            raise ValueError(f"unknown multi-turn class {cls!r}")
        docs.extend(_jsonl(root / "multi_turn_func_doc" / f"{MULTI_TURN_DOCS[cls]}.json"))
    return docs


@dataclass
class ToolSet:
    tools: list[dict]  # OpenAI tools: [{"type": "function", "function": {...}}]
    to_bfcl: dict[str, str] = field(default_factory=dict)  # OpenAI name -> BFCL name

    def bfcl_name(self, name: str) -> str:
        """The BFCL spelling of a name the model called (unknown names come back unchanged)."""
        return self.to_bfcl.get(name, name)


def to_openai_tools(functions: list[dict]) -> ToolSet:
    """BFCL function docs → OpenAI tools with legal, unique names."""
    tools, to_bfcl = [], {}
    for doc in functions:
        name = openai_name(doc["name"], taken=to_bfcl)
        to_bfcl[name] = doc["name"]
        params = convert_schema(doc.get("parameters") or {"type": "dict", "properties": {}})
        params.setdefault("properties", {})
        params["type"] = "object"
        tools.append({"type": "function", "function": {
            "name": name, "description": doc.get("description", ""), "parameters": params}})
    return ToolSet(tools, to_bfcl)


def openai_name(name: str, *, taken=()) -> str:
    """``name`` with illegal characters → ``_``, cut to 64, suffixed ``_2``, ``_3``… if taken."""
    base = _ILLEGAL.sub("_", name)[:64] or "f"
    out, n = base, 1
    while out in taken:
        n += 1
        suffix = f"_{n}"
        out = base[: 64 - len(suffix)] + suffix
    return out


def convert_schema(spec: dict) -> dict:
    """One BFCL parameter spec → JSON schema (recursing into properties and items)."""
    if not isinstance(spec, dict):
        raise ValueError(f"a BFCL parameter spec must be an object, got {spec!r}")
    out = {k: spec[k] for k in _KEEP if k in spec}
    kind = spec.get("type")
    if kind is not None:
        if kind not in _TYPES:
            raise ValueError(f"unknown BFCL type {kind!r}")
        if _TYPES[kind] is not None:
            out["type"] = _TYPES[kind]
    if isinstance(spec.get("properties"), dict):
        out["properties"] = {k: convert_schema(v) for k, v in spec["properties"].items()}
        if out.get("type") == "array":  # BFCL writes a few arrays of dicts this way
            out["items"] = {"type": "object", "properties": out.pop("properties")}
    if isinstance(spec.get("required"), list) and spec["required"]:
        target = out["items"] if "items" in out and out.get("type") == "array" else out
        target["required"] = list(spec["required"])
    if isinstance(spec.get("items"), dict):
        out["items"] = convert_schema(spec["items"])
    return out


def build_request(question: Question, tools: ToolSet, *, model: str, tool_choice: str = "auto",
                  max_tokens: int = 512, temperature: float = 0.0) -> dict:
    """The chat-completions body for a single-turn question (all its messages, the tools)."""
    if len(question.turns) != 1:
        raise ValueError(f"{question.id}: build_request takes single-turn questions "
                         f"({len(question.turns)} turns)")
    if tool_choice not in ("auto", "required", "none"):
        raise ValueError(f"tool_choice must be auto, required or none, got {tool_choice!r}")
    return {"model": model, "messages": list(question.turns[0]), "tools": tools.tools,
            "tool_choice": tool_choice, "parallel_tool_calls": True,
            "max_tokens": max_tokens, "temperature": temperature}


def parse_response(body: dict, tools: ToolSet) -> list[dict]:
    """A chat-completions response → the model's calls as ``[{bfcl_name: args}]``.

    Arguments that are not a JSON object are kept as the raw string, so the checker fails
    the call for its format (and irrelevance still sees that a call was made). No
    ``tool_calls`` means no call: text that merely looks like a call is not parsed, as in
    BFCL's function-calling mode.
    """
    try:
        message = body["choices"][0]["message"]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"not a chat-completions response: {str(body)[:200]}") from e
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        raw = function.get("arguments")
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            args = raw
        if not isinstance(args, dict):
            args = raw
        calls.append({tools.bfcl_name(function.get("name", "")): args})
    return calls


def answer_calls(ground_truth: list[dict], functions: list[dict]) -> list[dict]:
    """The gold answer as calls: each parameter's first accepted value, optional ones left out.

    Dict-typed parameters (and arrays of dicts) hold, per key, a list of accepted values;
    those are resolved the same way, one level deep as BFCL checks them.
    """
    docs = {doc["name"]: doc for doc in functions}
    calls = []
    for answer in ground_truth:
        (name, params), = answer.items()
        props = docs[name].get("parameters", {}).get("properties", {}) if name in docs else {}
        args = {}
        for param, accepted in params.items():
            values = [a for a in accepted if a != ""]
            # A few answers list a parameter the doc lacks (always optional): no call can
            # pass with it, so the gold call leaves it out.
            if values and (param in props or not props):
                args[param] = _resolve(values[0], props.get(param, {}))
        calls.append({name: args})
    return calls


def _resolve(value, spec: dict):
    kind, items = spec.get("type"), spec.get("items") or {}
    if kind == "dict" and isinstance(value, dict):
        return _first_of_each(value)
    if kind in ("array", "tuple") and items.get("type") == "dict" and isinstance(value, list):
        return [_first_of_each(v) if isinstance(v, dict) else v for v in value]
    return value


def _first_of_each(option: dict) -> dict:
    out = {}
    for key, accepted in option.items():
        values = [a for a in accepted if a != ""] if isinstance(accepted, list) else [accepted]
        if values:
            out[key] = values[0]
    return out
