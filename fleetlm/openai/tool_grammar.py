"""A tool list + tool_choice -> the llguidance Lark grammar that constrains the model's reply.

Contract: text the grammar accepts is what `tool_parser.parse_tool_output` reads back, and in
it every call names a function of the list and carries arguments that are compact JSON valid
under that function's `parameters` schema:

- "required": `<tool_call>CALL</tool_call>`, then (when parallel calls are allowed) up to
  MAX_PARALLEL_CALLS - 1 more calls, each after one "\\n"; then the end of the reply.
- "named": the same, with only the named function allowed.
- "auto": free text, or free text that runs up to the first `<tool_call>` and then calls as
  above. The text part is a lazy lexeme (llguidance's tool-calling idiom): it ends at the
  first `<tool_call>`, after which the reply is constrained; free text never contains the marker.
- "none": no grammar (plain text; the parser is not used either).

CALL is `{"name":"NAME","arguments":ARGS}`, the name fixed by the grammar, ARGS from the
function's schema via `%json`. A `parameters` object that does not say `additionalProperties`
is closed here (false): a call carries only declared parameters (what the schema lists is
what the function takes; small models otherwise invent keys), numbers without bounds get
wide ones and arrays without `maxItems` get MAX_ARRAY_ITEMS (see `_bounded`). All of these
only narrow the schema: the arguments still validate under the schema as given.
"""

from __future__ import annotations

import json

from fleetlm.openai.tool_prompt import CALL_CLOSE, CALL_OPEN, FunctionTool, ToolChoice

# More calls than this in one reply is a model looping; the cap also bounds the reply.
MAX_PARALLEL_CALLS = 8
# Compact JSON (no free whitespace, where small models loop), as structured.py does for
# response_format; in a Lark `%json` block the options go in the schema's "x-guidance".
_COMPACT = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


def tool_grammar(tools: list[FunctionTool], choice: ToolChoice, *, parallel: bool) -> str | None:
    """The Lark grammar text for the reply, or None under tool_choice "none"."""
    if choice.mode == "none":
        return None
    allowed = [t for t in tools if choice.mode != "named" or t.name == choice.name]
    lines = ["%llguidance {}"]
    if choice.mode == "auto":
        lines += ["start: TEXT | text_then_call calls",
                  f"text_then_call[lazy]: TEXT {_lit(CALL_OPEN)}",
                  r"TEXT: /(.|\n)*/"]
    else:
        lines.append(f"start: {_lit(CALL_OPEN)} calls")
    more = f' ({_lit(chr(10) + CALL_OPEN)} call){{0,{MAX_PARALLEL_CALLS - 1}}}' if parallel else ""
    lines.append(f"calls: call{more}")
    lines.append("call: " + " | ".join(f"fn_{i}" for i in range(len(allowed))))
    for i, tool in enumerate(allowed):
        head = _lit(f'{{"name":{json.dumps(tool.name)},"arguments":')
        lines.append(f"fn_{i}: {head} %json {json.dumps(_closed(tool.parameters))} {_lit('}' + CALL_CLOSE)}")
    return "\n".join(lines) + "\n"


def _closed(schema: dict) -> dict:
    """The schema as the grammar uses it: compact, closed when it does not say otherwise, and
    with bounded numbers."""
    out = _bounded(schema)
    out.setdefault("type", "object")
    if "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    out["x-guidance"] = _COMPACT
    return out


def _bounded(schema):
    """A copy of `schema` in which every integer / number gets -NUMBER_BOUND <= x <=
    NUMBER_BOUND on each side it leaves open, and numbers at most 8 decimals (multipleOf 1e-8): an unbounded JSON
    number is where small models write digits until max_tokens (measured on gemma-3-270m over
    BFCL: "radius":1000000000... in 4 of 10 questions). Likewise every array without `maxItems`
    gets maxItems = MAX_ARRAY_ITEMS (or its minItems, if larger): an open list is where they
    count until max_tokens (gemma-3-270m on BFCL parallel_5: "show_list":["1","2",...,"53",...
    over all 1024 tokens). Narrower than the schema, so what the grammar allows still validates
    under the schema as given."""
    if isinstance(schema, list):
        return [_bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: _bounded(v) for k, v in value.items()}
        elif key in _SCHEMA_KEYS:
            out[key] = _bounded(value)
        else:
            out[key] = value
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if ("integer" in types or "number" in types) and not {"enum", "const"} & set(schema):
        if not {"minimum", "exclusiveMinimum"} & set(schema):
            out["minimum"] = -NUMBER_BOUND
        if not {"maximum", "exclusiveMaximum"} & set(schema):
            out["maximum"] = NUMBER_BOUND
        if "integer" not in types and "multipleOf" not in schema:
            out["multipleOf"] = 1e-8
    if "array" in types and "maxItems" not in schema:
        minimum = schema.get("minItems")
        out["maxItems"] = max(MAX_ARRAY_ITEMS, minimum if isinstance(minimum, int) else 0)
    return out


NUMBER_BOUND = 10 ** 15
# The longest list in any BFCL gold answer has 20 items; a caller who needs more says maxItems.
MAX_ARRAY_ITEMS = 32
_SCHEMA_KEYS = {"items", "prefixItems", "additionalProperties", "anyOf", "oneOf", "allOf", "not", "contains"}
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions"}


def _lit(text: str) -> str:
    """A Lark string literal (JSON string escaping is valid Lark)."""
    return json.dumps(text, ensure_ascii=False)
