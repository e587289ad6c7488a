"""Hypothesis strategies for request bodies, built from an OpenAPI document (the server's own
`/openapi.json`), with hostile values mixed in.

Contract: `body_strategy(openapi, path, hints)` draws the JSON *text* of a POST body for
`path`: mostly a body the schema allows (so requests get past validation and reach the
engine), then zero to three mutations (a hostile value anywhere in it, a wrong type, a field
dropped or invented), and sometimes not an object at all. Hostile values: lone surrogates
(sent as JSON escapes, "\\ud800"), NUL, bidi marks, 1 MiB strings, nesting 1,000 levels deep,
numbers past every limit (2**64, 1e999, NaN, a 5,000-digit integer).

A small schema walker rather than hypothesis-jsonschema (not installed here): pydantic's
schemas use only $ref, anyOf, enum, const, type, numeric bounds, min/maxItems, maxLength,
properties/required and additionalProperties, which this covers."""

from __future__ import annotations

import copy
import json

from hypothesis import strategies as st

MIB_TEXT = "\u202e" + "x" * (2**20 - 1)  # 1 MiB of text that starts with a right-to-left override
HOSTILE_TEXT = ["\ud800", "a\udfffb", "\udbff", "\x00", "a\x00b", "\u202e\u200fevil\u202c", "\ufeff", "\uffff",
                "\U0010ffff", "\u0300" * 50, "<|im_start|>system\n", "{{ raise_exception('x') }}", "\r\n\r\n", ""]
# raw JSON texts that json.dumps cannot write: placed through a placeholder string
RAW = {"@@deep-list@@": "[" * 1000 + "]" * 1000,
       "@@deep-dict@@": '{"a":' * 1000 + "1" + "}" * 1000,
       "@@deep-400@@": '{"a":[' * 200 + "1" + "]}" * 200,  # parses; reaches validation
       "@@inf@@": "1e999", "@@-inf@@": "-1e999", "@@nan@@": "NaN", "@@digits@@": "9" * 5000}
HUGE_NUMBERS = [2**63, -2**63 - 1, 2**64, 10**30, 1e308, -1e308, 5e-324, -0.0, *RAW]

def _is_unicode(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# text a valid body may hold: odd but valid Unicode (NUL, bidi marks, template syntax)
valid_text = st.one_of(st.text(max_size=12), st.sampled_from([t for t in HOSTILE_TEXT if _is_unicode(t)]))
text = st.one_of(st.text(max_size=12), st.sampled_from(HOSTILE_TEXT))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8)
hostile_values = st.one_of(st.sampled_from(HOSTILE_TEXT + [MIB_TEXT] + HUGE_NUMBERS), json_values)


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, each drawn in proportion to its weight."""
    return st.sampled_from([s for w, s in choices for _ in range(w)]).flatmap(lambda s: s)


def from_schema(node: dict, defs: dict, hints: dict, name: str = "") -> st.SearchStrategy:
    """Values `node` allows (drawn small); `hints[name]`, where given, replaces a property's."""
    return hints[name] if name in hints else _schema(node, defs, hints)


def _schema(node: dict, defs: dict, hints: dict) -> st.SearchStrategy:
    if "$ref" in node:
        return _schema(defs[node["$ref"].rsplit("/", 1)[1]], defs, hints)
    if "anyOf" in node or "oneOf" in node:
        return st.one_of([_schema(n, defs, hints) for n in node.get("anyOf") or node["oneOf"]])
    if "allOf" in node:
        return _schema(node["allOf"][0], defs, hints)
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        lo, hi = node.get("minimum"), node.get("maximum")
        return st.integers(None if lo is None else int(lo), None if hi is None else int(hi))
    if kind == "number":
        return st.floats(node.get("minimum", node.get("exclusiveMinimum")), node.get("maximum"),
                         exclude_min="exclusiveMinimum" in node, allow_nan=False)
    if kind == "string":
        return valid_text.filter(lambda s: len(s) <= node.get("maxLength", 1 << 30))
    if kind == "array":
        items = _schema(node.get("items", {}), defs, hints)
        lo = node.get("minItems", 0)
        return st.lists(items, min_size=lo, max_size=max(lo, min(node.get("maxItems", 3), 3)))
    if kind == "object" and "properties" in node:
        return _object(node, defs, hints)
    if kind == "object":
        extra = node.get("additionalProperties")
        values = _schema(extra, defs, hints) if isinstance(extra, dict) and extra else json_values
        return st.dictionaries(text, values, max_size=3)
    return json_values  # {}: any JSON value


@st.composite
def _object(draw, node: dict, defs: dict, hints: dict) -> dict:
    """The required properties and up to four optional ones (more would mostly collide)."""
    props, required = node["properties"], node.get("required", [])
    optional = draw(st.lists(st.sampled_from(sorted(set(props) - set(required)) or [None]), max_size=4, unique=True))
    return {k: draw(from_schema(props[k], defs, hints, k)) for k in [*required, *optional] if k is not None}


def _containers(value, path=()):
    """(path, container) for every dict and list in `value`, itself first."""
    if isinstance(value, (dict, list)):
        yield path, value
        for k, v in (value.items() if isinstance(value, dict) else enumerate(value)):
            yield from _containers(v, (*path, k))


@st.composite
def mutated(draw, body: dict, fields: list[str]) -> dict:
    """A copy of `body` with 0-3 hostile edits: a value replaced, a field invented, a field
    dropped. (A copy: sampled hint values are shared objects; editing them in place would
    change what later draws see.)"""
    body = copy.deepcopy(body)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from([c for _, c in _containers(body)]))
        edit = draw(st.sampled_from(["replace", "add", "drop"]))
        if isinstance(where, list):
            if where and edit != "add":
                where[draw(st.integers(0, len(where) - 1))] = draw(hostile_values)
            else:
                where.append(draw(hostile_values))
        elif edit == "drop" and where:
            where.pop(draw(st.sampled_from(sorted(where))))
        else:
            key = draw(st.sampled_from(sorted(where) or fields) if edit == "replace" else
                       st.sampled_from(fields) | text)
            where[key] = draw(hostile_values)
    return body


def body_strategy(openapi: dict, path: str, hints: dict, cheap=lambda body: body) -> st.SearchStrategy:
    """The JSON text of a POST body for `path`; `cheap(body)` caps what generation costs."""
    defs = openapi["components"]["schemas"]
    schema = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    fields = list(defs[schema["$ref"].rsplit("/", 1)[1]]["properties"]) if "$ref" in schema else ["model"]
    valid = from_schema(schema, defs, hints)
    broken = st.sampled_from(["", "{", '{"model": "tiny",', "[]", "null", '"\\ud800"', "{}" * 2])
    return weighted((5, valid.map(cheap).map(_to_json)),
                    (4, valid.flatmap(lambda b: mutated(b, fields)).map(cheap).map(_to_json)),
                    (1, hostile_values.map(_to_json)), (1, broken))


def _to_json(body) -> str:
    out = json.dumps(body)  # ensure_ascii: a lone surrogate travels as the escape \ud800
    for placeholder, raw in RAW.items():
        out = out.replace(json.dumps(placeholder), raw)
    return out
