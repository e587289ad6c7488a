"""What a Target yields: typed response chunks, and what they add up to.

Contract: `Target.chat(req)` yields `ChatChunk`s and `Target.complete(req)` yields
`CompletionChunk`s. Each chunk holds pieces of one or more choices (`ChatDelta` /
`CompletionDelta`, OpenAI's stream deltas as values) and names the model that produced it
(`served_by`, on every chunk so a stream's headers can say it). The last chunk carries the
request's `Usage`; earlier chunks may carry the running usage so far (a stream cut short is
billed for it), so the last usage seen is the whole request's. The last chunk may also carry
engine `timing`, top-level extension fields (`extra`, e.g. `fleetlm_trace`) and, for a
compound program, the sub-calls it made (`calls`). A chunk may be a whole answer: a
non-streamed request is typically one chunk.

`collect_chat` / `collect_completion` add a Target's chunks up to the whole response
(`ChatResult` / `CompletionResult`); concatenating the deltas of a stream gives the same
result as the non-streamed request. Errors are never chunks: a Target raises an
`fleetlm.openai.errors.APIError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # prompt tokens served from a prefix cache; None: not known (an upstream that does not say)
    cached_tokens: int | None = None
    cost_usd: float = 0.0  # at the served model's prices (not on the wire)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        cached = None if self.cached_tokens is None or other.cached_tokens is None \
            else self.cached_tokens + other.cached_tokens
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens,
                     cached, self.cost_usd + other.cost_usd)


@dataclass
class Timing:
    """Engine-side latency of one request (arrival to first token; per token after it)."""

    ttft_s: float | None = None
    tpot_s: float | None = None


@dataclass
class SubCall:
    """One call a compound program made: the model id it asked, which model served, usage."""

    model: str
    served_by: str
    usage: Usage


@dataclass
class ToolCallDelta:
    """A piece of one tool call: the first piece of a call has `id` and `name`; later pieces
    carry more of its JSON `arguments`."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ChatDelta:
    """A piece of one chat choice: role (first piece), content, tool calls, the logprobs of
    the tokens it adds (OpenAI `logprobs.content` entries; None when not asked for), and the
    finish reason once the choice ends."""

    index: int = 0
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    logprobs: list[dict] | None = None
    finish_reason: str | None = None


@dataclass
class CompletionDelta:
    """A piece of one completion choice: text, its legacy `logprobs` object, finish reason."""

    index: int = 0
    text: str = ""
    logprobs: dict | None = None
    finish_reason: str | None = None


@dataclass
class _Chunk:
    served_by: str = ""
    usage: Usage | None = None  # the last chunk's is final; earlier ones may carry the running total
    timing: Timing | None = None
    extra: dict | None = None  # top-level fields of the response (fleetlm extensions)
    calls: list[SubCall] = field(default_factory=list)  # a program's sub-calls (the last chunk)


@dataclass
class ChatChunk(_Chunk):
    choices: list[ChatDelta] = field(default_factory=list)


@dataclass
class CompletionChunk(_Chunk):
    choices: list[CompletionDelta] = field(default_factory=list)


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass
class ChatMessage:
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class ChatChoice:
    index: int
    message: ChatMessage
    logprobs: list[dict] | None  # OpenAI `logprobs.content` entries; None when not asked for
    finish_reason: str | None


@dataclass
class CompletionChoice:
    index: int
    text: str
    logprobs: dict | None
    finish_reason: str | None


@dataclass
class _Result:
    served_by: str = ""
    usage: Usage = field(default_factory=Usage)
    timing: Timing | None = None
    extra: dict = field(default_factory=dict)
    calls: list[SubCall] = field(default_factory=list)

    def _take(self, chunk: _Chunk) -> None:
        self.served_by = chunk.served_by or self.served_by
        if chunk.usage is not None:
            self.usage = chunk.usage
        self.timing = chunk.timing or self.timing
        self.extra.update(chunk.extra or {})
        self.calls += chunk.calls


@dataclass
class ChatResult(_Result):
    choices: list[ChatChoice] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The first choice's content ("" when it has none)."""
        return (self.choices[0].message.content or "") if self.choices else ""


@dataclass
class CompletionResult(_Result):
    choices: list[CompletionChoice] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""


@dataclass
class _ChoiceParts:
    role: str = "assistant"
    content: str | None = None
    calls: dict[int, ToolCall] = field(default_factory=dict)  # by tool-call index
    logprobs: list[dict] | None = None
    finish_reason: str | None = None

    def add(self, d: ChatDelta) -> None:
        self.role = d.role or self.role
        if d.content is not None:
            self.content = (self.content or "") + d.content
        for tc in d.tool_calls or ():
            call = self.calls.setdefault(tc.index, ToolCall("", "", ""))
            call.id, call.name = tc.id or call.id, tc.name or call.name
            call.arguments += tc.arguments
        if d.logprobs is not None:
            self.logprobs = (self.logprobs or []) + d.logprobs
        self.finish_reason = d.finish_reason or self.finish_reason

    def choice(self, index: int) -> ChatChoice:
        calls = [self.calls[k] for k in sorted(self.calls)]
        content = self.content if self.content else (None if calls else "")  # OpenAI: null beside calls
        return ChatChoice(index, ChatMessage(self.role, content, calls), self.logprobs, self.finish_reason)


async def collect_chat(chunks: AsyncIterator[ChatChunk]) -> ChatResult:
    """Add a chat stream up to the whole response (see the module docstring)."""
    result = ChatResult()
    parts: dict[int, _ChoiceParts] = {}
    async for chunk in chunks:
        result._take(chunk)
        for d in chunk.choices:
            parts.setdefault(d.index, _ChoiceParts()).add(d)
    result.choices = [parts[i].choice(i) for i in sorted(parts)]
    return result


async def collect_completion(chunks: AsyncIterator[CompletionChunk]) -> CompletionResult:
    """Add a completion stream up to the whole response (legacy logprobs lists concatenated)."""
    result = CompletionResult()
    parts: dict[int, CompletionChoice] = {}
    async for chunk in chunks:
        result._take(chunk)
        for d in chunk.choices:
            c = parts.setdefault(d.index, CompletionChoice(d.index, "", None, None))
            c.text += d.text
            if d.logprobs is not None:
                c.logprobs = d.logprobs if c.logprobs is None else \
                    {k: c.logprobs[k] + d.logprobs[k] for k in c.logprobs}
            c.finish_reason = d.finish_reason or c.finish_reason
    result.choices = [parts[i] for i in sorted(parts)]
    return result


@dataclass
class Pricing:
    input_per_mtok: float = 0.0  # $ per million prompt tokens
    output_per_mtok: float = 0.0  # $ per million completion tokens

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


@dataclass
class ModelCard:
    """A model id's `/v1/models` entry. Optional fields appear on the wire only when set."""

    id: str
    owned_by: str = "fleetlm"
    max_model_len: int | None = None  # local engines
    parent: str | None = None  # an adapter's base model id
    root: str | None = None  # an adapter's folder
    pricing: Pricing | None = None  # upstreams with prices
    candidates: list[str] | None = None  # routers: the model ids they choose from
    pools: dict[str, str] | None = None  # pools: pool name -> model id
    prompt_edges: list[int] | None = None  # pools: prompt-length bucket edges
    planner: str | None = None  # tool agents
    joiner: str | None = None
    tools: list[str] | None = None
