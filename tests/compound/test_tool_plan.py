"""Plan text format: LLMCompiler lines, references ($1, $2.field, NESTFUL's $var1.field$),
substitution, errors, widths, and NESTFUL's executable sequences when the data is present."""

import json

import pytest

from fleetlm.compound.tools.plan import (
    Call,
    Plan,
    PlanError,
    Ref,
    Template,
    find_refs,
    format_plan,
    parse_plan,
    plan_from_nestful,
    substitute,
)
from fleetlm.config import shared_data

NESTFUL = shared_data("function_calling", "nestful")

PLAN = """Thought: look both up, then compare.
1. search(query="Mariana Trench depth", k=3)
2. search(query='Puerto Rico Trench', k=2)
Thought: now the arithmetic
3. math(expression="$1.value * 0.8 vs ${2}", options={"exact": true, "tags": [1, 2.5, null]})
4. lookup(id=$3, first=$1.items[0].id, flag=False)
5. join()
6. ignored(x=1)
"""


def test_parse_llmcompiler_plan():
    plan = parse_plan(PLAN)
    assert [c.id for c in plan.calls] == ["1", "2", "3", "4"]
    assert plan.calls[0].args == {"query": "Mariana Trench depth", "k": 3}
    assert plan.calls[1].args == {"query": "Puerto Rico Trench", "k": 2}
    expr = plan.calls[2].args["expression"]
    assert expr == Template((Ref("1", ("value",)), " * 0.8 vs ", Ref("2")))
    assert plan.calls[2].args["options"] == {"exact": True, "tags": [1, 2.5, None]}
    assert plan.calls[3].args == {"id": Ref("3"), "first": Ref("1", ("items", 0, "id")), "flag": False}
    assert plan.calls[2].deps == ("1", "2") and plan.calls[3].deps == ("3", "1")
    assert plan.levels() == {"1": 0, "2": 0, "3": 1, "4": 2} and plan.width() == 2


def test_format_round_trips():
    plan = parse_plan(PLAN)
    text = format_plan(plan)
    assert text.splitlines()[-1] == "5. join()"
    assert parse_plan(text).calls == plan.calls


def test_substitute_whole_values_and_templates():
    plan = parse_plan(PLAN)
    results = {"1": {"value": 10, "items": [{"id": "a7"}]}, "2": {"depth": 8.4}, "3": [1, 2]}
    assert substitute(plan.calls[2].args["expression"], results) == '10 * 0.8 vs {"depth": 8.4}'
    assert substitute(plan.calls[3].args, results) == {"id": [1, 2], "first": "a7", "flag": False}
    with pytest.raises(PlanError, match=r"no 'value'.*fields depth"):
        substitute(Ref("2", ("value",)), results)
    with pytest.raises(PlanError, match="no 5"):
        substitute(Ref("3", (5,)), results)
    with pytest.raises(PlanError, match="has no result"):
        substitute(Ref("9"), results)


def test_positional_arguments_need_parameter_names():
    text = '1. search("x")\n2. math("$1 + 1", 3)'
    with pytest.raises(PlanError, match="line 1.*parameter names"):
        parse_plan(text)
    plan = parse_plan(text, param_order={"search": ["query"], "math": ["expression", "digits"]})
    assert plan.calls[1].args == {"expression": Template((Ref("1"), " + 1")), "digits": 3}
    with pytest.raises(PlanError, match="at most 1"):
        parse_plan('1. search("x", "y")', param_order={"search": ["query"]})


@pytest.mark.parametrize("text, message", [
    ("1. search(query=$2)\n2. search(query='x')", "refers to no earlier call"),
    ("1. search(query='x'\n", "expected a call"),
    ("1. search(query='x)", "unterminated string"),
    ("1. search(query=x)", "expected a value"),
    ("1. search(q=1, q=2)", "given twice"),
    ("1. search(q=1, 2)", "positional argument after keyword"),
    ("1. search(q=[1 2])", "expected ','"),
    ("1. a(q=1)\n1. b(q=2)", "defined twice"),
    ("Thought: nothing to do\njoin()", "no calls"),
])
def test_bad_plans_name_the_problem(text, message):
    with pytest.raises(PlanError, match=message):
        parse_plan(text)


def test_dollar_amounts_in_prose_stay_text():
    plan = parse_plan('1. note(text="costs $5 and $1.50")\n2. note(text="$1 then $1.50")')
    assert plan.calls[0].args == {"text": "costs $5 and $1.50"} and plan.calls[0].deps == ()
    assert plan.calls[1].args["text"] == Template((Ref("1"), " then ", Ref("1"), ".50"))


def test_validate_names_unknown_tools():
    plan = parse_plan("1. search(q=1)\n2. fly(to='moon')")
    plan.validate({"search", "fly"})
    with pytest.raises(PlanError, match="unknown tool.*fly"):
        plan.validate({"search"})


def test_nestful_sequence():
    seq = [
        {"name": "Rates", "arguments": {"from": "USD"}, "label": "var1"},
        {"name": "Calc", "arguments": {"expr": "5 * $var1.Exchange Rate$", "raw": "$var1$"}, "label": "var2"},
        {"name": "Books", "arguments": {"author": "$var2.author[0].id$", "typo": "var1.x$"}, "label": "var3"},
        {"name": "var_result", "arguments": {"calc": "$var2$", "books": "$var3$"}},
    ]
    plan = plan_from_nestful(seq)
    assert [c.id for c in plan.calls] == ["var1", "var2", "var3"]
    assert plan.calls[1].args == {"expr": Template(("5 * ", Ref("var1", ("Exchange Rate",)))), "raw": Ref("var1")}
    assert plan.calls[2].args == {"author": Ref("var2", ("author", 0, "id")), "typo": "var1.x$"}
    assert plan.result == {"calc": Ref("var2"), "books": Ref("var3")}
    assert [r.call for r in find_refs(plan.result)] == ["var2", "var3"]
    assert str(plan.calls[2].args["author"]) == "$var2.author[0].id$"
    results = {"var1": {"Exchange Rate": 0.9}}
    assert substitute(plan.calls[1].args, results) == {"expr": "5 * 0.9", "raw": {"Exchange Rate": 0.9}}


def test_call_deps_default_from_arguments():
    c = Call("2", "t", {"a": [Ref("1", ("x",)), {"b": Template(("p", Ref("0")))}]})
    assert c.deps == ("1", "0")
    assert Plan([Call("0", "t", {}), Call("1", "t", {}), c]).width() == 2


@pytest.mark.skipif(not NESTFUL.is_dir(), reason=f"NESTFUL not found at {NESTFUL} (see ../shared/data/SOURCES.md)")
def test_every_executable_nestful_sequence_parses():
    data = json.loads((NESTFUL / "executable-data.json").read_text())
    for item in data:
        plan = plan_from_nestful(item["output"])
        ids = [c.id for c in plan.calls]
        for i, c in enumerate(plan.calls):
            assert set(c.deps) <= set(ids[:i])  # only earlier calls are read
        assert plan.result is not None and plan.width() >= 1
