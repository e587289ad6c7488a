"""Plans of tool calls that may read earlier calls' results, and their text format.

The planner writes LLMCompiler's format, one numbered call per line, ending with `join()`:

    Thought: look both up, then compare.
    1. search(query="Mariana Trench depth")
    2. search(query="Puerto Rico Trench depth")
    3. math(expression="$1.value * 0.8")
    4. join()

Arguments are keyword (`name=value`) or positional (mapped to the tool's parameters in
order); values are JSON or Python literals (strings in either quote, numbers, true/True,
null/None, lists, objects) or references. A reference names an earlier call and optionally
a path into its result: `$1`, `${1}`, `$2.field`, `$2.items[0].id`, and NESTFUL's
`$var1.field$` form (field names may hold spaces there). A reference that is a whole value
is replaced by the result itself (any JSON type); one inside a longer string is replaced by
its text (strings as they are, anything else as JSON). Lines that are not numbered calls
(thoughts, chatter) are ignored; parsing stops at `join()` or `<END_OF_PLAN>`.

Contract: `parse_plan` returns a `Plan` whose calls are in dependency order (every reference
points to an earlier call) or raises `PlanError` naming the line; `substitute` resolves a
call's arguments against finished results or raises `PlanError` naming the missing path.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any


class PlanError(ValueError):
    """A plan that cannot be parsed, or a reference that cannot be resolved."""


@dataclass(frozen=True)
class Ref:
    call: str  # id of the call whose result is read: "1" (LLMCompiler) or "var1" (NESTFUL)
    path: tuple[str | int, ...] = ()  # fields (str) and list indexes (int), outermost first

    def __str__(self) -> str:  # as written: NESTFUL ids ("var1") close with "$"
        path = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in self.path)
        return f"${self.call}{path}" + ("$" if self.call.startswith("var") else "")


@dataclass(frozen=True)
class Template:
    parts: tuple[str | Ref, ...]  # a string with references inside it


@dataclass
class Call:
    id: str
    tool: str
    args: dict[str, Any]  # JSON values, possibly holding Ref / Template anywhere inside
    deps: tuple[str, ...] = field(default=())  # ids this call reads, first use first

    def __post_init__(self):
        if not self.deps:
            self.deps = tuple(dict.fromkeys(r.call for r in find_refs(self.args)))


@dataclass
class Plan:
    calls: list[Call]
    result: Any = None  # what the answer is made of (NESTFUL's var_result), may hold Refs

    def validate(self, tools: Collection[str]) -> None:
        unknown = sorted({c.tool for c in self.calls} - set(tools))
        if unknown:
            raise PlanError(f"unknown tool(s) {', '.join(unknown)}; available: {', '.join(sorted(tools))}")

    def levels(self) -> dict[str, int]:
        """call id -> 0 for calls with no inputs, else 1 + the deepest input's level."""
        level: dict[str, int] = {}
        for c in self.calls:
            level[c.id] = 1 + max((level[d] for d in c.deps), default=-1)
        return level

    def width(self) -> int:
        """The most calls on one level: how many can run at once when latencies are equal."""
        counts: dict[int, int] = {}
        for lv in self.levels().values():
            counts[lv] = counts.get(lv, 0) + 1
        return max(counts.values(), default=0)


_NESTFUL_REF = r"\$(var\d+)((?:\.[^$.\[\]]+|\[\d+\])*)\$"
_LLMC_REF = r"\$\{?(\d+)\}?((?:\.[A-Za-z_]\w*|\[\d+\])*)"
_REF = re.compile(f"{_NESTFUL_REF}|{_LLMC_REF}")
_PATH = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")
_CALL_LINE = re.compile(r"^\s*(?:(\d+)\s*[.:)]\s*)?([A-Za-z_][\w.\-]*)\s*\((.*)\)\s*;?\s*$")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_KEYWORD = re.compile(r"([A-Za-z_]\w*)\s*=(?!=)")
_WORD = re.compile(r"(?:true|True|false|False|null|None)\b")
_WORDS = {"true": True, "True": True, "false": False, "False": False, "null": None, "None": None}


def _ref(match: re.Match) -> Ref:
    call = match.group(1) or match.group(3)
    path = match.group(2) if match.group(1) else match.group(4)
    return Ref(call, tuple(int(i) if i else f for f, i in _PATH.findall(path or "")))


def _string_value(text: str, known: Collection[str]) -> str | Ref | Template:
    """A string literal's value: itself, a Ref (the whole string is one reference) or a
    Template. References to ids not in `known` stay literal text (`$5` in prose)."""
    parts, pos = [], 0
    for m in _REF.finditer(text):
        ref = _ref(m)
        if ref.call not in known:
            continue
        if m.start() > pos:
            parts.append(text[pos:m.start()])
        parts.append(ref)
        pos = m.end()
    if not parts:
        return text
    if pos < len(text):
        parts.append(text[pos:])
    return parts[0] if len(parts) == 1 else Template(tuple(parts))


class _Args:
    """Recursive-descent reader of one call's argument list."""

    def __init__(self, text: str, known: Collection[str]):
        self.s, self.i, self.known = text, 0, known

    def fail(self, what: str):
        raise PlanError(f"{what} at column {self.i + 1} of {self.s!r}")

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def args(self) -> tuple[list, dict]:
        pos, kw = [], {}
        self.ws()
        while self.i < len(self.s):
            m = _KEYWORD.match(self.s, self.i)
            if m:
                self.i = m.end()
                if m.group(1) in kw:
                    self.fail(f"argument {m.group(1)!r} given twice")
                kw[m.group(1)] = self.value()
            elif kw:
                self.fail("positional argument after keyword arguments")
            else:
                pos.append(self.value())
            self.ws()
            if self.i < len(self.s) and self.s[self.i] != ",":
                self.fail("expected ',' or ')'")
            self.i += 1
            self.ws()
        return pos, kw

    def value(self) -> Any:
        self.ws()
        s, i = self.s, self.i
        if i >= len(s):
            self.fail("expected a value")
        c = s[i]
        if c in "\"'":
            end = i + 1
            while end < len(s) and s[end] != c:
                end += 2 if s[end] == "\\" else 1
            self.i = end + 1
            if end >= len(s):
                self.fail("unterminated string")
            return _string_value(ast.literal_eval(s[i:end + 1]), self.known)
        if c == "$":
            m = _REF.match(s, i)
            if not m:
                self.fail("malformed reference")
            ref = _ref(m)
            if ref.call not in self.known:
                self.fail(f"{ref} refers to no earlier call")
            self.i = m.end()
            return ref
        if c in "[{":
            close, out = ("]", []) if c == "[" else ("}", {})
            self.i += 1
            while True:
                self.ws()
                if self.i < len(s) and s[self.i] == close:
                    self.i += 1
                    return out
                if isinstance(out, list):
                    out.append(self.value())
                else:
                    key = self.value()
                    if not isinstance(key, str):
                        self.fail("object keys must be strings")
                    self.ws()
                    if self.i >= len(s) or s[self.i] != ":":
                        self.fail("expected ':'")
                    self.i += 1
                    out[key] = self.value()
                self.ws()
                if self.i < len(s) and s[self.i] == ",":
                    self.i += 1
                elif self.i >= len(s) or s[self.i] != close:
                    self.fail(f"expected ',' or {close!r}")
        m = _NUMBER.match(s, i) or _WORD.match(s, i)
        if m:
            self.i, t = m.end(), m.group(0)
            return _WORDS[t] if t in _WORDS else float(t) if any(ch in t for ch in ".eE") else int(t)
        self.fail("expected a value (string, number, true/false/null, list, object or $reference)")


def parse_plan(text: str, *, param_order: Mapping[str, list[str]] | None = None) -> Plan:
    """LLMCompiler-format text -> Plan. `param_order` (tool -> parameter names) maps
    positional arguments; without it a positional argument is an error."""
    calls: list[Call] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if "<END_OF_PLAN>" in stripped:
            break
        m = _CALL_LINE.match(line)
        if not m:
            if re.match(r"^\s*\d+\s*[.:)]", line) and not re.match(r"^\s*\d+\s*[.:)]\s*(Thought|#)", line):
                raise PlanError(f"line {lineno}: expected a call like `{len(calls) + 1}. tool(arg=...)`, got {stripped!r}")
            continue
        number, tool, inner = m.groups()
        if tool == "join":
            break
        if number is None:
            continue  # prose such as "e.g. print(x)": calls are numbered
        if number in {c.id for c in calls}:
            raise PlanError(f"line {lineno}: call {number} is defined twice")
        try:
            pos, kw = _Args(inner, {c.id for c in calls}).args()
            if pos:
                names = (param_order or {}).get(tool)
                if names is None:
                    raise PlanError(f"positional arguments need {tool}'s parameter names; use name=value")
                if len(pos) > len(names):
                    raise PlanError(f"{tool} takes at most {len(names)} arguments, got {len(pos)}")
                for name, v in zip(names, pos):
                    if name in kw:
                        raise PlanError(f"argument {name!r} given twice")
                    kw[name] = v
        except PlanError as exc:
            raise PlanError(f"line {lineno}: {exc}") from None
        calls.append(Call(number, tool, kw))
    if not calls:
        raise PlanError("the plan has no calls (expected lines like `1. tool(arg=...)`)")
    return Plan(calls)


def plan_from_nestful(sequence: list[dict]) -> Plan:
    """A NESTFUL `output` sequence (dicts with name, arguments, label; `var_result` last)
    -> Plan whose `result` is var_result's arguments."""
    calls, result = [], None
    for item in sequence:
        if item["name"] == "var_result":
            result = _nestful_value(item.get("arguments", {}), {c.id for c in calls})
            continue
        label = item.get("label") or f"var{len(calls) + 1}"
        calls.append(Call(label, item["name"], _nestful_value(item.get("arguments", {}), {c.id for c in calls})))
    return Plan(calls, result)


def _nestful_value(v, known):
    if isinstance(v, str):
        return _string_value(v, known)
    if isinstance(v, list):
        return [_nestful_value(x, known) for x in v]
    if isinstance(v, dict):
        return {k: _nestful_value(x, known) for k, x in v.items()}
    return v


def find_refs(value) -> list[Ref]:
    """Every Ref inside a value, in order."""
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, Template):
        return [p for p in value.parts if isinstance(p, Ref)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in find_refs(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in find_refs(v)]
    return []


def lookup(ref: Ref, results: Mapping[str, Any]) -> Any:
    if ref.call not in results:
        raise PlanError(f"{ref}: call {ref.call} has no result")
    value = results[ref.call]
    for step in ref.path:
        if isinstance(step, int) and isinstance(value, list) and -len(value) <= step < len(value):
            value = value[step]
        elif isinstance(step, str) and isinstance(value, dict) and step in value:
            value = value[step]
        else:
            have = f"fields {', '.join(map(str, value))}" if isinstance(value, dict) else type(value).__name__
            raise PlanError(f"{ref}: no {step!r} in the result of call {ref.call} (it has {have})")
    return value


def substitute(value, results: Mapping[str, Any]) -> Any:
    """`value` with every Ref replaced by the result it names and every Template joined."""
    if isinstance(value, Ref):
        return lookup(value, results)
    if isinstance(value, Template):
        return "".join(p if isinstance(p, str) else _text(lookup(p, results)) for p in value.parts)
    if isinstance(value, list):
        return [substitute(v, results) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, results) for k, v in value.items()}
    return value


def format_plan(plan: Plan) -> str:
    """Plan -> the text format `parse_plan` reads (so a parsed plan round-trips)."""
    lines = [f"{c.id}. {c.tool}({', '.join(f'{k}={_render(v)}' for k, v in c.args.items())})" for c in plan.calls]
    return "\n".join(lines + [f"{len(plan.calls) + 1}. join()"])


def _render(v) -> str:
    if isinstance(v, Ref):
        return str(v)
    if isinstance(v, Template):
        return json.dumps("".join(p if isinstance(p, str) else str(p) for p in v.parts))
    if isinstance(v, list):
        return "[" + ", ".join(_render(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_render(x)}" for k, x in v.items()) + "}"
    return json.dumps(v, ensure_ascii=False)


def _text(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
