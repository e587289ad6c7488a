"""BFCL's AST rules, re-implemented: is a model's list of calls an accepted answer?

Inputs are BFCL's own shapes, with names in BFCL's spelling (dots allowed):

* ``functions``: the question's function docs (BFCL types: ``dict``, ``float``, ``tuple``, ``any``…).
* ``calls``: the model's calls as ``[{name: {param: value}}]`` (JSON-decoded arguments).
* ``ground_truth``: ``[{name: {param: [accepted values…]}}]``; ``""`` among the accepted values
  means the parameter may be left out.

The rules follow ``bfcl_eval/eval_checker/ast_eval/ast_checker.py`` (gorilla @ 6ea5797) for
Python-language categories:

* simple: exactly one call; multiple: as many calls as the answer, each checked against the
  doc of the same name; parallel (and parallel_multiple): order-free matching — each answer
  call must be matched by a distinct model call.
* one call: the name must match; every ``required`` parameter present; no parameter that the
  doc or the answer does not list; types as the doc says (an ``int`` is accepted for ``float``,
  ``bool`` is never an ``int``; arrays/tuples check their item type one level deep; a value of
  the answer's own type is accepted too, as BFCL does for "variables"); values among the
  accepted ones, strings compared after BFCL's normalisation (drop `` ,./-_*^``, lower-case,
  ``'`` → ``"``), lists item by item, dicts key by key; an answer parameter without ``""``
  must be present.
* irrelevance: valid iff the model made no call; relevance: valid iff it made at least one.

:func:`check` returns a :class:`CheckResult`; it never raises on a malformed model output (a
non-dict call or non-dict arguments are failures), only on a category it does not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# BFCL's Python type mapping; "any" is checked as a string, as BFCL does.
PYTHON_TYPES: dict[str, type] = {"string": str, "integer": int, "float": float, "boolean": bool,
                                 "array": list, "tuple": list, "dict": dict, "any": str}
_NESTED = ("array", "tuple")
_STRIP = re.compile(r"[ ,./\-_*^]")
CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "relevance")


@dataclass(frozen=True)
class CheckResult:
    valid: bool
    error: str = ""  # why it failed (first failure only); "" when valid
    error_type: str = ""  # BFCL-style tag, e.g. "value_error:string"


OK = CheckResult(True)


def _fail(error_type: str, error: str) -> CheckResult:
    return CheckResult(False, error, error_type)


def rule_for(category: str) -> str:
    """Which rule set a BFCL category uses (one of :data:`CATEGORIES`)."""
    if "irrelevance" in category:
        return "irrelevance"
    if "relevance" in category:
        return "relevance"
    if "parallel" in category:  # parallel and parallel_multiple: both order-free
        return "parallel"
    if "multiple" in category:
        return "multiple"
    if category.startswith(("simple", "live_simple")) or category == "exec_simple":
        return "simple"
    raise ValueError(f"no BFCL rule for category {category!r}")


def check(category: str, functions: list[dict], calls: list[dict], ground_truth: list[dict]) -> CheckResult:
    """Score one question; ``calls`` is the model output as ``[{name: args}]``."""
    rule = rule_for(category)
    if rule == "irrelevance":
        return OK if not calls else _fail("irrelevance:made_call", f"expected no call, got {len(calls)}")
    if rule == "relevance":
        return OK if calls else _fail("relevance:no_call", "expected at least one call")
    for call in calls:
        if not (isinstance(call, dict) and len(call) == 1 and isinstance(next(iter(call.values())), dict)):
            return _fail("format:call", f"each call must be {{name: {{args}}}}, got {call!r}")
    if rule == "simple":
        if len(calls) != 1:
            return _fail("simple_function_checker:wrong_count", f"expected 1 call, got {len(calls)}")
        return check_call(_doc(functions, ground_truth[0]), calls[0], ground_truth[0])
    if len(calls) != len(ground_truth):
        return _fail(f"{rule}_function_checker:wrong_count",
                     f"expected {len(ground_truth)} calls, got {len(calls)}")
    if rule == "multiple":
        for call, answer in zip(calls, ground_truth):
            result = check_call(_doc(functions, answer), call, answer)
            if not result.valid:
                return result
        return OK
    return _match_unordered(functions, calls, ground_truth)


def _doc(functions: list[dict], answer: dict) -> dict:
    name = next(iter(answer))
    for doc in functions:
        if doc["name"] == name:
            return doc
    raise ValueError(f"ground truth names {name!r}, which the question's functions do not define")


def _match_unordered(functions, calls, ground_truth) -> CheckResult:
    """Each answer call needs its own model call that passes against it (greedy, as BFCL)."""
    free = list(range(len(calls)))
    for answer in ground_truth:
        doc = _doc(functions, answer)
        last = None
        for j in free:
            last = check_call(doc, calls[j], answer)
            if last.valid:
                free.remove(j)
                break
        else:
            why = last.error if last is not None else "no call left"
            return _fail("parallel_function_checker_no_order:cannot_find_match",
                         f"no call matches {next(iter(answer))!r}: {why}")
    return OK


def check_call(doc: dict, call: dict, answer: dict) -> CheckResult:
    """One model call ``{name: args}`` against one answer ``{name: {param: [accepted]}}``."""
    name = doc["name"]
    if name not in call:
        return _fail("simple_function_checker:wrong_func_name",
                     f"expected function {name!r}, got {next(iter(call))!r}")
    args, accepted = call[name], answer[name]
    if not isinstance(args, dict):
        return _fail("format:arguments", f"arguments of {name!r} must be an object")
    params = doc.get("parameters", {})
    props = params.get("properties", {})
    for param in params.get("required", []):
        if param not in args:
            return _fail("simple_function_checker:missing_required", f"missing required parameter {param!r}")
    for param, value in args.items():
        if param not in props or param not in accepted:
            return _fail("simple_function_checker:unexpected_param", f"unexpected parameter {param!r}")
        result = _check_param(param, value, props[param], accepted[param])
        if not result.valid:
            return result
    for param, values in accepted.items():
        if param not in args and "" not in values:
            return _fail("simple_function_checker:missing_optional",
                         f"parameter {param!r} is required by the answer")
    return OK


def _check_param(param: str, value, spec: dict, accepted: list) -> CheckResult:
    kind = spec.get("type", "string")
    expected = PYTHON_TYPES.get(kind, str)
    nested = None
    if kind in _NESTED and isinstance(spec.get("items"), dict):
        nested = PYTHON_TYPES.get(spec["items"].get("type", "string"), str)
    if kind == "float" and type(value) is int:  # Python: an int is a valid float
        value = float(value)
    result, is_variable = _check_type(param, value, accepted, kind, expected, nested)
    if not result.valid:
        return result
    # BFCL: when the answer's values are of another type than the doc's (a "variable", e.g.
    # the string "data['sales']" for an array, or None), compare values as they are.
    if not is_variable:
        if expected is dict:
            return _check_dict(param, value, accepted)
        if expected is list and nested is dict:
            return _check_list_of_dicts(param, value, accepted)
        if expected is str:
            # A string is compared only with the accepted strings, both normalised.
            if normalise(value) in [normalise(a) for a in accepted if isinstance(a, str)]:
                return OK
            return _fail("value_error:string", f"invalid value for {param!r}: {value!r}; accepted {accepted!r}")
        if expected is list:
            # BFCL reads the optional "" as an empty list.
            options = [a if isinstance(a, list) else [] for a in accepted if isinstance(a, list) or a == ""]
            if _normalised(value) in [_normalised(a) for a in options]:
                return OK
            return _fail("value_error:list", f"invalid value for {param!r}: {value!r}; accepted {accepted!r}")
    if value not in accepted:
        return _fail("value_error:others", f"invalid value for {param!r}: {value!r}; accepted {accepted!r}")
    return OK


def _answer_type(accepted: list):
    """The type of the first non-optional accepted value (None if all are "")."""
    for a in accepted:
        if a != "":
            return type(a)
    return None


def _check_type(param, value, accepted, kind, expected, nested) -> tuple[CheckResult, bool]:
    """(result, is_variable): BFCL's type check, one level deep into arrays."""
    answer_type = _answer_type(accepted)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if nested is None:
            return OK, is_variable
        for option in accepted:
            # BFCL: an option that is not a list (the optional "") passes the item check.
            if not isinstance(option, list) or all(
                    _check_type(param, item, option, str(nested), nested, None)[0].valid for item in value):
                return OK, is_variable
        return _fail("type_error:nested", f"items of {param!r} are not all {kind} of {nested.__name__}"), False
    if answer_type is not None and type(value) is answer_type:
        return OK, True
    return _fail("type_error:simple", f"{param!r} must be {kind}, got {type(value).__name__} {value!r}"), False


def normalise(s: str) -> str:
    """BFCL's string normalisation: drop spaces and ``,./-_*^``, lower-case, ``'`` → ``"``."""
    return _STRIP.sub("", s).lower().replace("'", '"')


def _normalised(values: list) -> list:
    return [normalise(v) if isinstance(v, str) else v for v in values]


def _check_dict(param, value: dict, options: list) -> CheckResult:
    """Accept ``value`` if one non-"" option matches it key by key (one level deep, as BFCL)."""
    result = _fail("dict_checker:unclear", f"no accepted dict for {param!r}")
    for option in options:
        if option == "":
            continue
        result = _dict_matches(param, value, option)
        if result.valid:
            return OK
    return result


def _dict_matches(param, value: dict, option: dict) -> CheckResult:
    if not isinstance(value, dict) or not isinstance(option, dict):
        return _fail("value_error:dict_key", f"{param!r}: expected a dict")
    for key, item in value.items():
        if key not in option:
            return _fail("value_error:dict_key", f"unexpected key {key!r} in {param!r}")
        got = normalise(item) if isinstance(item, str) else item
        if got not in _normalised(option[key]):
            return _fail("value_error:dict_value", f"invalid {param!r}[{key!r}]: {item!r}")
    for key, accepted in option.items():
        if key not in value and "" not in accepted:
            return _fail("value_error:dict_key", f"missing key {key!r} in {param!r}")
    return OK


def _check_list_of_dicts(param, value: list, options: list) -> CheckResult:
    result = _fail("list_dict_checker:unclear", f"no accepted list of dicts for {param!r}")
    for option in options:
        if not isinstance(option, list) or len(option) != len(value):
            result = _fail("value_error:list_dict_count", f"wrong number of dicts in {param!r}")
            continue
        results = [_dict_matches(param, v, o) for v, o in zip(value, option)]
        bad = next((r for r in results if not r.valid), None)
        if bad is None:
            return OK
        result = bad
    return result
