"""Generated text -> content + tool calls, whole or as OpenAI stream deltas.

Contract: `parse_tool_output(text, finished=True)` is the non-streamed result. While a reply
streams, `parse_tool_output(prefix, finished=False)` is monotone: its content and each
call's arguments are prefixes of what any longer prefix (and the finished text) gives, and a
call appears only once its name is complete. It holds back a tail of the content that may
still turn out to be a partial `<tool_call>`; arguments need no hold-back, as they end where
their JSON object closes.
`ToolCallStreamer` emits the differences, so the concatenation of the streamed deltas equals
the non-streamed message exactly (the biggest bug cluster of tool streaming elsewhere).

The text format is the one `tool_grammar` enforces (see tool_prompt): content, then calls
`<tool_call>{"name":"NAME","arguments":ARGS}</tool_call>` separated by "\\n". A reply cut by
max_tokens keeps its last call with the arguments generated so far (finish_reason "length",
as OpenAI does); a call whose name was not finished is dropped.

Repeats: a call identical to an earlier one in the same reply (name and arguments) ends the
reply; it and everything after it are dropped (`repeated`), and serving stops generating
there. Small models under a grammar that allows several calls loop this way (gemma-3-270m
repeated its call up to the cap on every one of 20 BFCL questions). To keep streaming exact,
a call that so far is the start of an earlier call is only shown once it differs.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from fleetlm.openai.tool_prompt import CALL_CLOSE, CALL_OPEN, NAME_PATTERN

_HEAD = re.compile(r'\{"name":"(' + NAME_PATTERN + r')","arguments":')
_END = "}" + CALL_CLOSE
_SEP = "\n" + CALL_OPEN
_DECODER = json.JSONDecoder()


@dataclass
class ParsedCall:
    name: str
    arguments: str  # JSON text as generated (compact); partial while streaming or when cut off
    complete: bool  # the closing `}</tool_call>` was generated


@dataclass
class ParsedOutput:
    content: str
    calls: list[ParsedCall] = field(default_factory=list)
    repeated: bool = False  # a call repeated an earlier one exactly: the reply ends before it


def parse_tool_output(text: str, *, finished: bool) -> ParsedOutput:
    """Content before the first `<tool_call>`, then the calls (see the module docstring)."""
    start = text.find(CALL_OPEN)
    if start < 0:
        return ParsedOutput(text if finished else text[:len(text) - _held(text, CALL_OPEN)])
    parsed = ParsedOutput(text[:start])
    pos = start + len(CALL_OPEN)
    while True:
        head = _HEAD.match(text, pos)
        if head is None:
            return parsed  # name not finished (or not a call): nothing to report yet
        args_at = head.end()
        try:
            _, args_end = _DECODER.raw_decode(text, args_at)
        except json.JSONDecodeError:
            args_end = None
        name = head.group(1)
        if args_end is not None and text.startswith(_END, args_end):
            if _repeats(parsed.calls, name, text[args_at:args_end], complete=True):
                parsed.repeated = True
                return parsed
            parsed.calls.append(ParsedCall(name, text[args_at:args_end], True))
            pos = args_end + len(_END)
            if text.startswith(_SEP, pos):
                pos += len(_SEP)
                continue
            return parsed
        # Open arguments are a prefix of the finished ones, whatever comes next: the object
        # can only close later. Once closed, what follows is (part of) the end tag.
        args = text[args_at:] if args_end is None else text[args_at:args_end]
        if not _repeats(parsed.calls, name, args, complete=False):  # else: shown once it differs
            parsed.calls.append(ParsedCall(name, args, False))
        return parsed


def _repeats(calls: list[ParsedCall], name: str, args: str, *, complete: bool) -> bool:
    """Is (name, args) an earlier call (complete) or the start of one (not complete)?"""
    return any(c.name == name and (c.arguments == args if complete else c.arguments.startswith(args))
               for c in calls)


def _held(text: str, marker: str) -> int:
    """Length of the longest proper tail of `text` that is a prefix of `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_calls_json(calls: list[ParsedCall], ids: list[str]) -> list[dict]:
    """ParsedCalls -> the message's OpenAI `tool_calls` list."""
    return [{"id": i, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c, i in zip(calls, ids)]


class ToolCallStreamer:
    """Per choice: cumulative generated text in, OpenAI `delta` dicts out.

    Per call the first delta carries index, id, type, function.name and arguments ""; later
    deltas carry argument fragments. Content deltas carry `content`. `ids` are the call ids
    handed out so far, in order (the non-streamed message would use the same)."""

    def __init__(self):
        self.ids: list[str] = []
        self._content = 0  # chars of content sent
        self._args: list[int] = []  # chars of arguments sent, per call
        self._repeated = False

    def update(self, text: str, *, finished: bool) -> list[dict]:
        parsed = parse_tool_output(text, finished=finished)
        self._repeated = parsed.repeated
        deltas = []
        if len(parsed.content) > self._content:
            deltas.append({"content": parsed.content[self._content:]})
            self._content = len(parsed.content)
        for k, call in enumerate(parsed.calls):
            if k == len(self.ids):
                self.ids.append(new_call_id())
                self._args.append(0)
                deltas.append({"tool_calls": [{"index": k, "id": self.ids[k], "type": "function",
                                               "function": {"name": call.name, "arguments": ""}}]})
            if len(call.arguments) > self._args[k]:
                deltas.append({"tool_calls": [{"index": k, "function": {
                    "arguments": call.arguments[self._args[k]:]}}]})
                self._args[k] = len(call.arguments)
        return deltas

    @property
    def num_calls(self) -> int:
        return len(self.ids)

    @property
    def repeated(self) -> bool:
        return self._repeated
