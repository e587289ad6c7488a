"""BFCL AST rules: hand-made cases per rule, and the self-test on every category present."""

import copy
import json

import pytest

from fleetlm.evals.bfcl import (
    answer_calls,
    available_categories,
    default_root,
    load_category,
)
from fleetlm.evals.bfcl_checker import check, normalise, rule_for

ROOT = default_root()
needs_data = pytest.mark.skipif(not ROOT.is_dir(), reason=f"BFCL data not found at {ROOT} "
                                                          "(see ../shared/data/SOURCES.md)")

AREA = {"name": "geo.area", "parameters": {"type": "dict", "required": ["base", "height"], "properties": {
    "base": {"type": "float"}, "height": {"type": "integer"}, "unit": {"type": "string"},
    "sides": {"type": "array", "items": {"type": "integer"}},
    "opts": {"type": "dict", "properties": {"precise": {"type": "boolean"}}}}}}
AREA_GT = {"geo.area": {"base": [10.0], "height": [5], "unit": ["units", ""], "sides": [[3, 4], ""],
                        "opts": [{"precise": [True, ""]}, ""]}}
WEATHER = {"name": "weather", "parameters": {"type": "dict", "required": ["city"], "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}}}}


def one(args, gt=AREA_GT, name="geo.area"):
    return check("simple_python", [AREA], [{name: args}], [gt])


def test_simple_rules():
    assert one({"base": 10.0, "height": 5}).valid
    assert one({"base": 10, "height": 5}).valid  # int accepted for float
    assert not one({"base": 10.0, "height": 5.0}).valid  # float is not an integer
    assert one({"base": 10.0, "height": True}).error != ""  # bool is not an integer
    assert one({"base": 10.0, "height": True}).error_type == "type_error:simple"
    assert one({"base": 10.0}).error_type == "simple_function_checker:missing_required"
    assert one({"base": 10.0, "height": 5, "color": "red"}).error_type == "simple_function_checker:unexpected_param"
    assert one({"base": 10.0, "height": 6}).error_type == "value_error:others"
    assert one({"base": 10.0, "height": 5}, name="geo_area").error_type == "simple_function_checker:wrong_func_name"
    assert not check("simple_python", [AREA], [], [AREA_GT]).valid
    two = [{"geo.area": {"base": 10.0, "height": 5}}] * 2
    assert check("simple_python", [AREA], two, [AREA_GT]).error_type == "simple_function_checker:wrong_count"


def test_strings_lists_dicts():
    assert one({"base": 10.0, "height": 5, "unit": " Units."}).valid  # BFCL normalisation
    assert one({"base": 10.0, "height": 5, "unit": "cm"}).error_type == "value_error:string"
    assert one({"base": 10.0, "height": 5, "sides": [3, 4]}).valid
    assert not one({"base": 10.0, "height": 5, "sides": [4, 3]}).valid  # lists keep their order
    need_sides = {"geo.area": {"base": [10.0], "height": [5], "sides": [[3, 4]]}}
    assert one({"base": 10.0, "height": 5, "sides": [3, "4"]}, gt=need_sides).error_type == "type_error:nested"
    assert one({"base": 10.0, "height": 5, "opts": {"precise": True}}).valid
    assert one({"base": 10.0, "height": 5, "opts": {}}).valid  # the key is optional
    assert one({"base": 10.0, "height": 5, "opts": {"fast": True}}).error_type == "value_error:dict_key"
    assert normalise("New York, NY") == normalise("new-york ny") == "newyorkny"
    assert normalise("it's") == 'it"s'
    gt = {"geo.area": {"base": [10.0], "height": [5], "unit": ["cm"]}}  # the answer requires unit
    assert one({"base": 10.0, "height": 5}, gt=gt).error_type == "simple_function_checker:missing_optional"
    # An answer value of another type than the doc's ("variable") is compared as it is.
    gt = {"geo.area": {"base": [10.0], "height": [5], "sides": ["data['sides']"]}}
    assert one({"base": 10.0, "height": 5, "sides": "data['sides']"}, gt=gt).valid


def test_parallel_is_order_free_and_multiple_is_not():
    gt = [{"weather": {"city": ["Paris"], "days": ["", 1]}}, {"weather": {"city": ["Rome"], "days": [3]}}]
    calls = [{"weather": {"city": "Rome", "days": 3}}, {"weather": {"city": "paris"}}]
    assert check("parallel", [WEATHER], calls, gt).valid
    assert check("live_parallel_multiple", [WEATHER], calls[::-1], gt).valid
    assert not check("parallel", [WEATHER], [calls[0], calls[0]], gt).valid  # one call per answer
    assert not check("parallel", [WEATHER], calls[:1], gt).valid
    mult = [{"geo.area": {"base": [1.0], "height": [2]}}]
    assert check("multiple", [WEATHER, AREA], [{"geo.area": {"base": 1, "height": 2}}], mult).valid
    assert not check("multiple", [WEATHER, AREA], [{"weather": {"city": "Paris"}}], mult).valid


def test_irrelevance_and_malformed_calls():
    assert check("irrelevance", [WEATHER], [], None).valid
    assert not check("irrelevance", [WEATHER], [{"weather": {"city": "x"}}], None).valid
    assert check("live_relevance", [WEATHER], [{"weather": {}}], None).valid
    assert check("simple_python", [AREA], [{"geo.area": "{not json"}], [AREA_GT]).error_type == "format:call"
    with pytest.raises(ValueError, match="no BFCL rule"):
        rule_for("multi_turn_base")


# --- self-test on the real data: gold answers pass, corrupted answers fail ------------------

def _single_turn():
    return [c for c in available_categories(ROOT) if not c.startswith("multi_turn")]


def _satisfiable(q):
    """An empty accepted-values list (a few live questions) admits no value under BFCL's rules."""
    return all(accepted != [] for answer in q.ground_truth for params in answer.values()
               for accepted in params.values())


def _gold(q):
    calls = answer_calls(q.ground_truth, q.functions) if q.ground_truth else []
    return json.loads(json.dumps(calls))  # what arrives over HTTP


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("category", _single_turn() if ROOT.is_dir() else [])
def test_gold_answers_score_100(category):
    questions = [q for q in load_category(category, ROOT) if q.ground_truth is None or _satisfiable(q)]
    failed = [(q.id, r.error) for q in questions
              if not (r := check(category, q.functions, _gold(q), q.ground_truth or [])).valid]
    assert len(questions) > 0 and failed == []


def _docs(q):
    return {d["name"]: d["parameters"] for d in q.functions}


def _wrong_name(q, calls):
    (name, args), = calls[0].items()
    calls[0] = {name + "_x": args}
    return calls


def _drop_required(q, calls):
    (name, args), = calls[0].items()
    required = [p for p in _docs(q)[name].get("required", []) if p in args]
    if not required:
        return None
    del args[required[0]]
    return calls


def _corrupt_type(q, calls):
    (name, args), = calls[0].items()
    props = _docs(q)[name]["properties"]
    for param in args:
        answer_types = {type(a) for a in q.ground_truth[0][name][param] if a != ""}
        kind = props[param].get("type")
        for bad in ({"corrupt": 1}, ["corrupt"], "corrupt", 123457, True):
            if type(bad) in answer_types or (kind == "float" and type(bad) is int):
                continue
            if {"dict": dict, "array": list, "tuple": list, "string": str, "any": str, "integer": int,
                    "boolean": bool, "float": float}.get(kind) is type(bad):
                continue
            args[param] = bad
            return calls
    return None


def _corrupt_value(q, calls):
    (_, args), = calls[0].items()
    for param, value in args.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, str):
            args[param] = value + " zqx corrupt"
        elif isinstance(value, (int, float)):
            args[param] = value + 7919
        elif isinstance(value, list):
            args[param] = value + (value[:1] or [0])
        elif isinstance(value, dict):
            args[param] = {**value, "zqx_corrupt": 1}
        else:
            continue
        return calls
    return None


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("category", _single_turn() if ROOT.is_dir() else [])
def test_corrupted_answers_score_0(category):
    corruptions = [_wrong_name, _drop_required, _corrupt_type, _corrupt_value]
    tried = passed = 0
    for q in load_category(category, ROOT):
        if q.ground_truth is None or rule_for(category) == "irrelevance":
            tried += 1  # irrelevance: any call at all is the corruption
            passed += check(category, q.functions, [{q.functions[0]["name"]: {}}], []).valid
            continue
        for corrupt in corruptions:
            calls = corrupt(q, copy.deepcopy(_gold(q)))
            if calls is not None:
                tried += 1
                passed += check(category, q.functions, calls, q.ground_truth).valid
    assert tried > 0 and passed == 0
