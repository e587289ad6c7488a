"""Tool calling without a server: the grammar (walked token by token with random allowed
tokens), the parser (monotone over every prefix; streamed deltas == whole message), the
prompt rendering (through the tiny and the embedded Gemma chat templates), and the errors."""

from __future__ import annotations

import json
import random
import zlib

import jsonschema
import pytest

from fleetlm.backends.tool_budget import select_tools_for_budget
from fleetlm.openai.errors import APIError
from fleetlm.openai.protocol import ChatMessage
from fleetlm.openai.tool_calls import ChoiceDeltas, ToolSession
from fleetlm.openai.tool_grammar import MAX_ARRAY_ITEMS, MAX_PARALLEL_CALLS, tool_grammar
from fleetlm.openai.tool_parser import parse_tool_output
from fleetlm.openai.tool_prompt import (
    ToolChoice,
    parse_tool_choice,
    parse_tools,
    render_messages,
    system_block,
)
from tests.tiny_models import VOCAB, byte_tokenizer

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                         "unit": {"enum": ["c", "f"]}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "math.add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "number"},
                                         "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
        "required": ["a", "b"]}}},
    {"type": "function", "function": {"name": "noop"}},
]
SCHEMAS = {t["function"]["name"]: t["function"].get("parameters", {"type": "object"}) for t in TOOLS}


@pytest.fixture(scope="module")
def compiler():
    from fleetlm.engine.structured import GrammarCompiler

    tok = byte_tokenizer()
    return tok, GrammarCompiler(tok, VOCAB, [tok.eos_token_id])


def walk(compiler, grammar: str, rng: random.Random, forced: str = "", limit: int = 300) -> tuple[str, bool]:
    """A random path through the grammar: (text, ended) where ended means EOS was allowed and taken
    or the grammar finished. Prefers ending a little once allowed, so most walks finish."""
    from fleetlm.engine.structured import StructuredOutput

    tok, gc = compiler
    m = gc.matcher(StructuredOutput("grammar", grammar))
    ids = tok(forced, add_special_tokens=False).input_ids
    for t in ids:
        m.accept(t)
    for _ in range(limit):
        if m.is_finished():
            return tok.decode(ids), True
        allowed = m.allowed_mask().nonzero().flatten().tolist()
        if tok.eos_token_id in allowed and rng.random() < 0.3:
            return tok.decode(ids), True
        choices = [a for a in allowed if a != tok.eos_token_id]
        # lean towards short strings and markup so walks close their JSON
        t = rng.choice([c for c in choices if tok.decode([c]) in '"}],<>/\n'] or choices) \
            if rng.random() < 0.6 else rng.choice(choices)
        m.accept(t)
        ids.append(t)
    return tok.decode(ids), False


def session(choice="required", parallel=True) -> ToolSession:
    tools = parse_tools(TOOLS)
    ch = parse_tool_choice(choice, tools)
    return ToolSession(tools, ch, parallel, tool_grammar(tools, ch, parallel=parallel))


def check_stream_equals_message(s: ToolSession, text: str, reason: str):
    """Feed every prefix as the stream would; the deltas' concatenation must equal the message."""
    deltas = ChoiceDeltas(s)
    content, calls, stream_finish = "", {}, None
    for n in range(min(1, len(text)), len(text) + 1):  # an empty reply still gets its last update
        sent, finish = deltas.update(text[:n], reason if n == len(text) else None)
        stream_finish = stream_finish or finish
        for d in sent:
            content += d.get("content") or ""
            for tc in d.get("tool_calls", []):
                entry = calls.setdefault(tc["index"], {"id": tc.get("id"), "name": None, "arguments": ""})
                entry["name"] = tc["function"].get("name") or entry["name"]
                entry["arguments"] += tc["function"]["arguments"]
    message, finish = s.message(text, reason)
    assert content == (message["content"] or "")
    expected = [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls", [])]
    assert [(calls[k]["name"], calls[k]["arguments"]) for k in sorted(calls)] == expected
    assert all(calls[k]["id"].startswith("call_") for k in calls)
    assert stream_finish == finish
    return message, finish


@pytest.mark.parametrize("choice", ["required", "auto", {"type": "function", "function": {"name": "math.add"}}])
@pytest.mark.parametrize("parallel", [True, False])
def test_grammar_walks_parse_validate_and_stream_identically(compiler, choice, parallel):
    s = session(choice, parallel)
    rng = random.Random(zlib.crc32(f"{choice}{parallel}".encode()))  # hash() of a str varies per process
    finished = 0
    for i in range(12):
        forced = "Let me check <tool_call>" if choice == "auto" and i % 2 else ""
        text, ended = walk(compiler, s.grammar, rng, forced)
        message, finish = check_stream_equals_message(s, text, "stop" if ended else "length")
        if not ended:
            continue
        finished += 1
        calls = message.get("tool_calls", [])
        if choice != "auto" or forced:
            assert calls and finish == "tool_calls", text
        if choice == "auto" and forced:
            assert message["content"] == "Let me check "
        assert len(calls) <= (MAX_PARALLEL_CALLS if parallel else 1)
        for call in calls:
            name = call["function"]["name"]
            assert name in SCHEMAS and (not isinstance(choice, dict) or name == "math.add")
            jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])
    assert finished >= 6


@pytest.mark.parametrize("array, items", [
    ({"type": "array", "items": {"type": "string"}}, MAX_ARRAY_ITEMS),  # open: capped
    ({"type": "array", "items": {"type": "string"}, "maxItems": 3}, 3),  # the schema's own cap
    ({"type": "array", "items": {"type": "string"}, "minItems": 40}, 40),  # a floor above the cap
])
def test_open_arrays_end_within_the_cap(compiler, array, items):
    """A model that keeps adding items (gemma-3-270m counted "1","2",... for all of max_tokens
    on BFCL parallel_5) must close the list at MAX_ARRAY_ITEMS, unless the schema says otherwise."""
    from fleetlm.engine.structured import StructuredOutput

    tok, gc = compiler
    tools = parse_tools([{"type": "function", "function": {"name": "shows", "parameters": {
        "type": "object", "properties": {"names": array}, "required": ["names"]}}}])
    choice = parse_tool_choice("required", tools)
    m = gc.matcher(StructuredOutput("grammar", tool_grammar(tools, choice, parallel=False)))
    comma = tok(",", add_special_tokens=False).input_ids
    text = '<tool_call>{"name":"shows","arguments":{"names":["a"'
    for t in tok(text, add_special_tokens=False).input_ids:
        m.accept(t)
    for _ in range(100):  # add an item whenever the grammar lets us
        if not m.allowed_mask()[comma[0]]:
            break
        for t in tok(',"a"', add_special_tokens=False).input_ids:
            m.accept(t)
        text += ',"a"'
    assert text.count('"a"') == items
    for t in tok("]}}</tool_call>", add_special_tokens=False).input_ids:
        m.accept(t)
    assert m.is_finished() or m.allowed_mask()[tok.eos_token_id]


def test_auto_free_text_never_holds_a_call_marker(compiler):
    s = session("auto")
    rng = random.Random(5)
    for _ in range(6):
        text, ended = walk(compiler, s.grammar, rng, "Sure! <tool")
        message, _ = s.message(text, "stop" if ended else "length")
        assert message.get("tool_calls") or "<tool_call>" not in (message["content"] or "")


def test_parser_prefixes_are_monotone_on_tricky_text():
    s = session("auto")
    text = ('a < b <tool_ca <tool_call>{"name":"get_weather","arguments":{"city":"}</tool_call>"}}</tool_call>\n'
            '<tool_call>{"name":"math.add","arguments":{"a":1,"b":2.5}}</tool_call>')
    message, finish = check_stream_equals_message(s, text, "stop")
    assert message["content"] == "a < b <tool_ca "
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == ['{"city":"}</tool_call>"}', '{"a":1,"b":2.5}']
    assert finish == "tool_calls"
    cut = text[:text.index('2.5')]  # cut off by max_tokens inside the second call
    message, finish = check_stream_equals_message(s, cut, "length")
    assert finish == "length" and message["tool_calls"][1]["function"]["arguments"] == '{"a":1,"b":'
    assert parse_tool_output('<tool_call>{"name":"get_wea', finished=True).calls == []


def test_a_repeated_call_ends_the_reply():
    s = session("required")
    a = '<tool_call>{"name":"math.add","arguments":{"a":1,"b":2}}</tool_call>'
    b = '<tool_call>{"name":"math.add","arguments":{"a":1,"b":3}}</tool_call>'
    text = f"{a}\n{b}\n{a}\n{b}"
    message, finish = check_stream_equals_message(s, text, "length")
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == ['{"a":1,"b":2}', '{"a":1,"b":3}']
    assert finish == "tool_calls"  # ended at the repeat, not by max_tokens
    # while a call is still the start of an earlier one it is not shown; once it differs it is
    pending = parse_tool_output(a + '\n<tool_call>{"name":"math.add","arguments":{"a":1,"b"', finished=False)
    assert len(pending.calls) == 1 and not pending.repeated
    differs = parse_tool_output(a + '\n<tool_call>{"name":"math.add","arguments":{"a":12', finished=False)
    assert differs.calls[1].arguments == '{"a":12'
    deltas = ChoiceDeltas(s)
    assert deltas.update(a + "\n" + a, None)[1] == "tool_calls" and deltas.done


def test_none_is_plain_text():
    s = session("none")
    assert s.grammar is None
    message, finish = s.message('<tool_call>{"name":"noop","arguments":{}}</tool_call>', "stop")
    assert "tool_calls" not in message and finish == "stop"


def test_prompt_block_lists_every_tool_and_the_rule():
    tools = parse_tools(TOOLS)
    block = system_block(tools, ToolChoice("named", "noop"), parallel=False)
    listed = block.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert [json.loads(x)["name"] for x in listed] == ["get_weather", "math.add", "noop"]
    assert "You must call noop. Call at most one function." in block


def conversation():
    args = json.dumps({"city": "Paris"})
    return [ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Weather in Paris and 1+2?"),
            ChatMessage(role="assistant", content=None, tool_calls=[
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}},
                {"id": "call_2", "type": "function", "function": {"name": "math.add", "arguments": '{"a":1,"b":2}'}}]),
            ChatMessage(role="tool", tool_call_id="call_1", content="22 C"),
            ChatMessage(role="tool", tool_call_id="call_2", content="3"),
            ChatMessage(role="assistant", content="22 C, and 3."),
            ChatMessage(role="user", content="Thanks")]


@pytest.mark.parametrize("template", ["tiny", "gemma"])
def test_multi_turn_renders_through_chat_templates(template):
    from fleetlm.models.gguf_import import GEMMA_CHAT_TEMPLATE

    tok = byte_tokenizer()
    if template == "gemma":
        tok.chat_template = GEMMA_CHAT_TEMPLATE
    block = system_block(parse_tools(TOOLS), ToolChoice("auto"), True)
    messages = render_messages(conversation(), block)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Be brief.\n\n# Tools")
    assert messages[2]["content"] == ('<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>\n'
                                      '<tool_call>{"name":"math.add","arguments":{"a":1,"b":2}}</tool_call>')
    assert messages[3]["content"] == ('<tool_response>{"name": "get_weather", "content": "22 C"}</tool_response>\n\n'
                                      '<tool_response>{"name": "math.add", "content": "3"}</tool_response>')
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert '<tool_response>{"name": "math.add", "content": "3"}</tool_response>' in text
    assert text.count("<tool_call>") == 3  # two calls, and the format line of the tool block


def test_budget_keeps_the_most_relevant_tools():
    tools = parse_tools(TOOLS)
    asked = [ChatMessage(role="user", content="What is the weather like in Paris today?")]
    assert select_tools_for_budget(tools, asked, ToolChoice("auto"), None) == tools
    assert select_tools_for_budget(tools, asked, ToolChoice("auto"), 3) == tools
    assert [t.name for t in select_tools_for_budget(tools, asked, ToolChoice("auto"), 1)] == ["get_weather"]
    kept = select_tools_for_budget(tools, asked, ToolChoice("named", "noop"), 2)
    assert [t.name for t in kept] == ["get_weather", "noop"]  # the named one always stays; input order


@pytest.mark.parametrize("tools, choice, param", [
    ([{"type": "retrieval"}], None, "tools[0]"),
    ([{"type": "function", "function": {"name": "bad name"}}], None, "tools[0].function.name"),
    ([TOOLS[2], TOOLS[2]], None, "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], None,
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "dict"}}}}}], None, "tools[0].function.parameters"),
    (TOOLS, {"type": "function", "function": {"name": "missing"}}, "tool_choice"),
    (TOOLS, "sometimes", "tool_choice"),
])
def test_bad_tools_and_choices_are_400s(tools, choice, param):
    with pytest.raises(APIError) as e:
        parse_tool_choice(choice, parse_tools(tools))
    assert e.value.status == 400 and e.value.param == param


@pytest.mark.parametrize("messages", [
    [ChatMessage(role="user", content="x"), ChatMessage(role="tool", tool_call_id="nope", content="1")],
    [ChatMessage(role="user", content="x"), ChatMessage(role="assistant", tool_calls=[
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}])],
    [ChatMessage(role="user", content="x"), ChatMessage(role="assistant", tool_calls=[{"id": "c"}])],
])
def test_bad_tool_history_is_a_400(messages):
    with pytest.raises(APIError) as e:
        render_messages(messages, None)
    assert e.value.status == 400 and e.value.param.startswith("messages[1]")
