"""Tool calling for one chat request: the glue between the request and the serving path.

`tool_session(req)` checks `tools` / `tool_choice` / `parallel_tool_calls` (400s name the
field), applies the tool budget (through the caller's `select`), and returns a `ToolSession`
(None for a request without tools) that gives: the template messages (`prompt_messages`),
the grammar for the engine (`grammar`, Lark text), the non-streamed message (`message`),
and per-choice stream deltas (`ChoiceDeltas`, also used for plain text so that serving has
one streaming path).

Prompt format, grammar and parsing live in tool_prompt, tool_grammar and tool_parser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fleetlm.openai.errors import APIError
from fleetlm.openai.tool_grammar import tool_grammar
from fleetlm.openai.tool_parser import (
    ToolCallStreamer,
    new_call_id,
    parse_tool_output,
    tool_calls_json,
)
from fleetlm.openai.tool_prompt import (
    FunctionTool,
    ToolChoice,
    parse_tool_choice,
    parse_tools,
    render_messages,
    system_block,
)

# (tools, messages, tool choice, budget) -> the tools to keep, in their input order
SelectTools = Callable[[list[FunctionTool], list, ToolChoice, int], list[FunctionTool]]


@dataclass(frozen=True)
class ToolSession:
    tools: list[FunctionTool]  # after the budget: the ones the model sees
    choice: ToolChoice
    parallel: bool  # parallel_tool_calls (default true): more than one call per reply
    grammar: str | None  # Lark text; None under tool_choice "none"

    @property
    def parses_calls(self) -> bool:
        return self.choice.mode != "none"

    def reply_over(self, out) -> bool:
        """Is every choice of this engine output (a RequestOutput) finished or ended by a
        repeated call (see tool_parser), so that generation can stop?"""
        return self.parses_calls and all(c.finish_reason is not None or
                                         parse_tool_output(c.text, finished=False).repeated for c in out.outputs)

    def message(self, text: str, reason: str | None) -> tuple[dict, str | None]:
        """Finished generated text + engine finish reason -> (OpenAI message, finish_reason).
        reason None: generation was stopped here after a repeated call."""
        reason = reason or "stop"
        if not self.parses_calls:
            return {"role": "assistant", "content": text}, reason
        parsed = parse_tool_output(text, finished=True)
        if parsed.repeated:  # the reply ended at the repeat, whatever came after it
            reason = "stop"
        msg = {"role": "assistant", "content": parsed.content or (None if parsed.calls else "")}
        if parsed.calls:
            msg["tool_calls"] = tool_calls_json(parsed.calls, [new_call_id() for _ in parsed.calls])
        return msg, finish_reason(reason, len(parsed.calls))


def finish_reason(reason: str | None, num_calls: int) -> str | None:
    """Engine reason -> OpenAI's: a reply that ended normally with calls ends in "tool_calls"."""
    reason = {"abort": "stop"}.get(reason, reason)
    return "tool_calls" if reason == "stop" and num_calls else reason


def tool_session(req, *, max_tools: int | None = None, select: SelectTools | None = None) -> ToolSession | None:
    """The request's tool settings, checked; None when it carries no tools. `max_tools` is the
    server's tool budget (the request's own `max_tools` wins); over it, `select` keeps the
    tools the model sees (the serving side's retrieval policy; None keeps them all)."""
    if not req.tools:
        if req.tool_choice not in (None, "none"):
            raise APIError(400, "tool_choice is only allowed when tools are given", param="tool_choice")
        return None
    tools = parse_tools(req.tools)
    choice = parse_tool_choice(req.tool_choice, tools)
    budget = req.max_tools if req.max_tools is not None else max_tools
    if select is not None and budget is not None and len(tools) > budget:
        tools = select(tools, req.messages, choice, budget)
    parallel = req.parallel_tool_calls is not False
    return ToolSession(tools, choice, parallel, tool_grammar(tools, choice, parallel=parallel))


def prompt_messages(req, session: ToolSession | None) -> list[dict]:
    """The request's messages as the chat template takes them, the tool list in the system
    message (see tool_prompt for the format)."""
    block = system_block(session.tools, session.choice, session.parallel) \
        if session is not None and session.parses_calls else None
    return render_messages(req.messages, block)


class ChoiceDeltas:
    """One choice of a stream: cumulative text in, OpenAI `delta` dicts out. Plain text gives
    content deltas as before; with tools, content and tool-call deltas from ToolCallStreamer,
    whose concatenation equals `ToolSession.message` for the same text."""

    def __init__(self, session: ToolSession | None):
        self.streamer = ToolCallStreamer() if session is not None and session.parses_calls else None
        self.sent = 0  # plain text: chars sent
        self.first = True
        self.done = False  # finished, or ended by a repeated call: nothing more to send

    def update(self, text: str, reason: str | None) -> tuple[list[dict], str | None]:
        """(deltas to send now, possibly none; OpenAI finish_reason once the choice is over).
        The first delta ever carries the role. A repeated call ends the choice here."""
        if self.done:
            return [], None
        if self.streamer is None:
            delta = text[self.sent:]
            self.sent = len(text)
            if not (self.first or delta or reason):
                return [], None
            deltas = [{"content": delta}]
        else:
            deltas = self.streamer.update(text, finished=reason is not None)
            if reason is None and self.streamer.repeated:
                reason = "stop"  # parsing stops at the repeat, so finished or not reads the same
            if not deltas and (self.first or reason):
                deltas = [{}] if not self.first else [{"content": None}]
        if self.first:
            deltas[0] = {"role": "assistant", **deltas[0]}
            self.first = False
        self.done = reason is not None
        return deltas, finish_reason(reason, self.streamer.num_calls if self.streamer else 0)
