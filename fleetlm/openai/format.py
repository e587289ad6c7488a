"""Engine outputs -> OpenAI response and stream-chunk dicts (pure functions, no I/O)."""

from __future__ import annotations

import time


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def chat_logprobs(tokenizer, entries) -> dict:
    """TokenLogprob list -> chat `logprobs` object ({"content": [...]})."""
    def item(tid: int, lp: float) -> dict:
        text = token_text(tokenizer, tid)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    content = []
    for e in entries:
        d = item(e.token_id, e.logprob)
        d["top_logprobs"] = [item(t, lp) for t, lp in e.top]
        content.append(d)
    return {"content": content}


def completion_logprobs(tokenizer, entries, text_offset0: int = 0) -> dict:
    """TokenLogprob list -> legacy completions `logprobs` object."""
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


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def envelope(kind: str, rid: str, model: str, choices: list[dict], use: dict | None = None,
             created: int | None = None) -> dict:
    """A response or stream chunk: kind is "chat.completion", "chat.completion.chunk" or
    "text_completion" (OpenAI uses the last for both completion responses and chunks)."""
    body = {"id": rid, "object": kind, "created": created if created is not None else int(time.time()),
            "model": model, "choices": choices, "system_fingerprint": "fleetlm"}
    if use is not None:
        body["usage"] = use
    return body
