"""Values -> OpenAI JSON: engine logprobs, response chunks and whole responses, model cards
(pure functions, no I/O). The HTTP edge writes what these return, and only that."""

from __future__ import annotations

import dataclasses
import time

from fleetlm.openai.chunks import (
    ChatChunk,
    ChatDelta,
    ChatResult,
    CompletionChunk,
    CompletionDelta,
    CompletionResult,
    ModelCard,
    Pricing,
    ToolCallDelta,
    Usage,
)


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def chat_logprobs(tokenizer, entries) -> list[dict]:
    """Engine TokenLogprobs -> chat `logprobs.content` entries."""
    def item(tid: int, lp: float) -> dict:
        text = token_text(tokenizer, tid)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    content = []
    for e in entries:
        d = item(e.token_id, e.logprob)
        d["top_logprobs"] = [item(t, lp) for t, lp in e.top]
        content.append(d)
    return content


def completion_logprobs(tokenizer, entries, text_offset0: int = 0) -> dict:
    """Engine TokenLogprobs -> legacy completions `logprobs` object."""
    tokens, lps, tops, offsets = [], [], [], []
    offset = text_offset0
    for e in entries:
        t = token_text(tokenizer, e.token_id)
        tokens.append(t)
        lps.append(e.logprob)
        tops.append({token_text(tokenizer, tid): lp for tid, lp in e.top})
        offsets.append(offset)
        offset += len(t)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def usage(u: Usage) -> dict:
    out = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
           "total_tokens": u.total_tokens}
    if u.cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": u.cached_tokens}
    return out


def envelope(kind: str, rid: str, model: str, choices: list[dict], use: dict | None = None,
             created: int | None = None) -> dict:
    """A response or stream chunk: kind is "chat.completion", "chat.completion.chunk" or
    "text_completion" (OpenAI uses the last for both completion responses and chunks)."""
    body = {"id": rid, "object": kind, "created": created if created is not None else int(time.time()),
            "model": model, "choices": choices, "system_fingerprint": "fleetlm"}
    if use is not None:
        body["usage"] = use
    return body


def chat_delta(d: ChatDelta) -> dict:
    """One choice of a stream chunk. A first piece with only the role says `content: null`."""
    delta: dict = {}
    if d.role is not None:
        delta["role"] = d.role
    if d.content is not None or (d.role is not None and not d.tool_calls):
        delta["content"] = d.content
    if d.tool_calls:
        calls = []
        for tc in d.tool_calls:
            call: dict = {"index": tc.index}
            if tc.id is not None:
                call.update(id=tc.id, type="function")
            call["function"] = {"arguments": tc.arguments} if tc.name is None else \
                {"name": tc.name, "arguments": tc.arguments}
            calls.append(call)
        delta["tool_calls"] = calls
    return {"index": d.index, "delta": delta,
            "logprobs": {"content": d.logprobs} if d.logprobs is not None else None,
            "finish_reason": d.finish_reason}


def completion_delta(d: CompletionDelta) -> dict:
    return {"index": d.index, "text": d.text, "logprobs": d.logprobs, "finish_reason": d.finish_reason}


def stream_chunk(chunk: ChatChunk | CompletionChunk, rid: str, created: int) -> dict:
    """A chunk's choices (and extension fields) as one SSE event body; usage goes separately."""
    if isinstance(chunk, ChatChunk):
        kind, choices = "chat.completion.chunk", [chat_delta(d) for d in chunk.choices]
    else:
        kind, choices = "text_completion", [completion_delta(d) for d in chunk.choices]
    return {**envelope(kind, rid, chunk.served_by, choices, created=created), **(chunk.extra or {})}


def usage_chunk(kind: str, rid: str, model: str, u: Usage, created: int) -> dict:
    """The usage-only chunk a stream ends with when `stream_options.include_usage` is set."""
    return envelope(kind, rid, model, [], usage(u), created)


def chat_completion(result: ChatResult, rid: str) -> dict:
    choices = []
    for c in result.choices:
        message: dict = {"role": c.message.role, "content": c.message.content}
        if c.message.tool_calls:
            message["tool_calls"] = [{"id": t.id, "type": "function",
                                      "function": {"name": t.name, "arguments": t.arguments}}
                                     for t in c.message.tool_calls]
        choices.append({"index": c.index, "message": message,
                        "logprobs": {"content": c.logprobs} if c.logprobs is not None else None,
                        "finish_reason": c.finish_reason})
    body = envelope("chat.completion", rid, result.served_by, choices, usage(result.usage))
    return {**body, **result.extra}


def text_completion(result: CompletionResult, rid: str) -> dict:
    choices = [{"index": c.index, "text": c.text, "logprobs": c.logprobs, "finish_reason": c.finish_reason}
               for c in result.choices]
    return {**envelope("text_completion", rid, result.served_by, choices, usage(result.usage)), **result.extra}


def model_card(card: ModelCard, created: int) -> dict:
    """A `/v1/models` entry: id, object, created, owned_by, then the card's set fields."""
    out = {"id": card.id, "object": "model", "created": created, "owned_by": card.owned_by}
    for f in dataclasses.fields(card):
        value = getattr(card, f.name)
        if f.name not in out and value is not None:
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


# ---- OpenAI JSON -> values (an upstream's answers) ------------------------------------
def parse_chat_delta(index: int, delta: dict, finish_reason: str | None, logprobs: list[dict] | None) -> ChatDelta:
    """An OpenAI stream `delta` (or a whole `message`) as a ChatDelta."""
    calls = None
    if delta.get("tool_calls"):
        calls = []
        for k, tc in enumerate(delta["tool_calls"]):
            fn = tc.get("function") or {}
            calls.append(ToolCallDelta(tc.get("index", k), tc.get("id"), fn.get("name"), fn.get("arguments") or ""))
    return ChatDelta(index, delta.get("role"), delta.get("content"), calls, logprobs, finish_reason)


def parse_chat_choice(choice: dict) -> ChatDelta:
    """A choice of a chat response or stream chunk."""
    lp = choice.get("logprobs")
    return parse_chat_delta(choice.get("index", 0), choice.get("delta") or choice.get("message") or {},
                            choice.get("finish_reason"), lp.get("content") if isinstance(lp, dict) else None)


def parse_completion_choice(choice: dict) -> CompletionDelta:
    return CompletionDelta(choice.get("index", 0), choice.get("text") or "", choice.get("logprobs"),
                           choice.get("finish_reason"))


def parse_usage(u: dict, pricing: Pricing | None = None) -> Usage:
    """OpenAI `usage` as Usage, its cost at `pricing`."""
    p, c = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
    return Usage(p, c, int(cached) if cached is not None else None, pricing.cost(p, c) if pricing else 0.0)


# top-level response fields that are OpenAI's own; any other (fleetlm_trace) is kept as `extra`
STANDARD_FIELDS = frozenset({"id", "object", "created", "model", "choices", "usage", "system_fingerprint",
                             "service_tier"})
