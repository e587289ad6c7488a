"""Chat JSONL -> token ids + assistant-only loss mask; bad data names its line."""

from __future__ import annotations

import json

import pytest

from fleetlm.tune.data import DataError, load_chat_jsonl, parse_example, plain_messages, tokenize_chat
from tests.tiny_models import byte_tokenizer


def _write(tmp_path, rows):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


def test_mask_covers_exactly_the_assistant_tokens():
    tok = byte_tokenizer()
    ex = parse_example({"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]})
    t = tokenize_chat(tok, ex, max_len=4096)
    full = tok.apply_chat_template(plain_messages(ex.messages), tokenize=False)
    assert tok.decode(t.input_ids) == full  # segments concatenate to the whole conversation
    masked = tok.decode([i for i, m in zip(t.input_ids, t.loss_mask) if m])
    assert masked == "hello there\n4\n"  # each assistant turn and its end-of-turn newline, no prompts
    unmasked = tok.decode([i for i, m in zip(t.input_ids, t.loss_mask) if not m])
    assert "[assistant] " in unmasked and "hello" not in unmasked


def test_tool_calls_are_rendered_and_trained_on():
    tok = byte_tokenizer()
    ex = parse_example({"tools": [{"type": "function", "function": {"name": "add", "parameters": {}}}],
                        "messages": [
        {"role": "user", "content": "add 1 and 2"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "3"},
        {"role": "assistant", "content": "It is 3."}]})
    t = tokenize_chat(tok, ex, max_len=4096)
    masked = tok.decode([i for i, m in zip(t.input_ids, t.loss_mask) if m])
    assert masked == '<tool_call>{"name":"add","arguments":{"a":1,"b":2}}</tool_call>\nIt is 3.\n'
    text = tok.decode(t.input_ids)  # the server's rendering (fleetlm.openai.tool_prompt)
    assert '<tool_response>{"name": "add", "content": "3"}</tool_response>' in text and "# Tools" in text


def test_truncation_keeps_mask_aligned():
    tok = byte_tokenizer()
    ex = parse_example({"messages": [{"role": "user", "content": "x" * 50},
                                     {"role": "assistant", "content": "y" * 50}]})
    t = tokenize_chat(tok, ex, max_len=90)
    assert len(t.input_ids) == len(t.loss_mask) == 90 and 0 < sum(t.loss_mask) < 50


@pytest.mark.parametrize("row, needle", [
    ("{not json", "not valid JSON"),
    ({"messages": []}, "non-empty"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "role must be"),
    ({"messages": [{"role": "assistant", "content": None}]}, "content is null"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, "JSON string"),
    ({"messages": [{"role": "tool", "content": "3"}, {"role": "assistant", "content": "ok"}]}, "tool_call_id"),
    ({"messages": [{"role": "assistant", "content": "ok"}], "extra": 1}, "unknown key"),
])
def test_bad_data_names_the_line(tmp_path, row, needle):
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    p = _write(tmp_path, [good, good, row])
    with pytest.raises(DataError) as exc:
        load_chat_jsonl(p)
    assert f"{p}:3:" in str(exc.value) and needle in str(exc.value)


def test_template_rejection_names_the_line(tmp_path):
    from fleetlm.models.gguf_import import GEMMA_CHAT_TEMPLATE

    tok = byte_tokenizer()
    tok.chat_template = GEMMA_CHAT_TEMPLATE  # demands user/assistant alternation starting with user
    ex = load_chat_jsonl(_write(tmp_path, [{"messages": [{"role": "assistant", "content": "first"}]}]))[0]
    with pytest.raises(DataError, match="line 1: the chat template rejects"):
        tokenize_chat(tok, ex, max_len=100)
