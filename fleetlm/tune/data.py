"""OpenAI-format chat JSONL -> token ids and an assistant-only loss mask.

One JSON object per line: ``{"messages": [...], "tools": [...]?}`` with messages as in the
Chat Completions API: roles ``system`` / ``developer`` / ``user`` / ``assistant`` / ``tool``;
``content`` a string, a list of ``{"type": "text", "text": ...}`` parts, or null on an
assistant message that has ``tool_calls`` (``[{"id", "type": "function", "function":
{"name", "arguments": "<JSON string>"}}]``); a ``tool`` message needs ``tool_call_id``.
Every error names the file and line.

Chat templates of small models (Gemma's included) know only plain user/assistant turns, so
tools are written into the text before templating, by the server's own renderer
(:mod:`fleetlm.openai.tool_prompt`: the tool list as a ``# Tools`` block in the system message,
calls as ``<tool_call>{"name":...,"arguments":{...}}</tool_call>``, results as user turns
``<tool_response>...</tool_response>``), so an adapter learns exactly the format it is
served with.

Loss mask: the conversation is rendered prefix by prefix with the tokenizer's chat
template; the tokens of each assistant turn (its text and its end-of-turn marker, not the
generation prompt before it) get mask 1, everything else 0.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

ROLES = ("system", "developer", "user", "assistant", "tool")


class DataError(ValueError):
    """Bad training data; the message names the file and line."""


@dataclass(frozen=True)
class ChatExample:
    messages: list[dict]  # OpenAI chat messages, validated
    tools: list[dict] | None  # OpenAI tool definitions, or None
    line: int  # 1-based line in the source file (0 when built in memory)


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is an assistant token (a training target)
    line: int


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_chat_jsonl(path: str | Path) -> list[ChatExample]:
    """Parse and validate every line (blank lines are skipped); raises DataError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    examples = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            try:
                examples.append(parse_example(obj, line=n))
            except DataError as exc:
                raise DataError(f"{path}:{n}: {exc}") from None
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def parse_example(obj, *, line: int = 0) -> ChatExample:
    if not isinstance(obj, dict):
        raise DataError("each line must be a JSON object with a 'messages' list")
    unknown = set(obj) - {"messages", "tools"}
    if unknown:
        raise DataError(f"unknown key(s) {sorted(unknown)}; expected 'messages' and optional 'tools'")
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise DataError("'messages' must be a non-empty list")
    for i, m in enumerate(msgs):
        _check_message(m, i)
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError("no assistant message: nothing to train on")
    tools = obj.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
                isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
                and isinstance(t["function"].get("name"), str) for t in tools):
            raise DataError("'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\": ...}}")
    return ChatExample(messages=msgs, tools=tools, line=line)


def _check_message(m, i: int) -> None:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise DataError(f"{where}: role must be one of {', '.join(ROLES)}")
    content = m.get("content")
    if content is not None and not isinstance(content, str):
        if not (isinstance(content, list) and all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content)):
            raise DataError(f"{where}: content must be a string, a list of text parts, or null")
    calls = m.get("tool_calls")
    if calls is not None:
        if m["role"] != "assistant":
            raise DataError(f"{where}: only assistant messages may have tool_calls")
        if not isinstance(calls, list) or not calls:
            raise DataError(f"{where}: tool_calls must be a non-empty list")
        for j, c in enumerate(calls):
            fn = c.get("function") if isinstance(c, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise DataError(f"{where}.tool_calls[{j}]: needs function.name")
            try:
                json.loads(fn.get("arguments", "{}"))
            except (TypeError, json.JSONDecodeError):
                raise DataError(f"{where}.tool_calls[{j}]: function.arguments must be a JSON string") from None
    elif content is None:
        raise DataError(f"{where}: content is null and there are no tool_calls")
    if m["role"] == "tool" and not isinstance(m.get("tool_call_id"), str):
        raise DataError(f"{where}: a tool message needs tool_call_id")


def plain_messages(messages: list[dict], tools: list[dict] | None = None) -> list[dict]:
    """Tool calls, tool results and tool definitions written as text, exactly as the server
    renders a request (tool_choice "auto", parallel calls allowed): [{role, content: str}]."""
    from fleetlm.openai.errors import APIError
    from fleetlm.openai.protocol import ChatMessage
    from fleetlm.openai.tool_prompt import ToolChoice, parse_tools, render_messages, system_block

    try:
        block = system_block(parse_tools(tools), ToolChoice("auto"), True) if tools else None
        return render_messages([ChatMessage(**m) for m in messages], block)
    except APIError as exc:
        raise DataError(exc.message) from None


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def tokenize_chat(tokenizer, example: ChatExample, *, max_len: int) -> TokenizedExample:
    """Token ids of the whole conversation and its assistant-only loss mask (see module doc).

    The text is tokenized in segments cut at turn boundaries, so every mask edge falls on a
    token edge. Longer than ``max_len`` -> truncated on the right."""
    try:
        msgs = plain_messages(example.messages, example.tools)
    except DataError as exc:
        raise DataError(f"line {example.line}: {exc}") from None
    ids: list[int] = []
    mask: list[int] = []
    done = ""

    def add(text: str, flag: int) -> None:
        nonlocal done
        if not text.startswith(done):
            raise DataError(f"line {example.line}: the chat template does not render this conversation "
                            "prefix by prefix (a later turn changes earlier text)")
        piece = tokenizer(text[len(done):], add_special_tokens=False).input_ids
        ids.extend(piece)
        mask.extend([flag] * len(piece))
        done = text

    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        try:
            add(render(tokenizer, msgs[:i], add_generation_prompt=True), 0)
            add(render(tokenizer, msgs[: i + 1], add_generation_prompt=False), 1)
        except DataError:
            raise
        except Exception as exc:  # the template's own error (e.g. roles must alternate)
            raise DataError(f"line {example.line}: the chat template rejects this conversation: {exc}") from None
    return TokenizedExample(input_ids=ids[:max_len], loss_mask=mask[:max_len], line=example.line)
