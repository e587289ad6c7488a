"""Chat and text completions on the local engine: request -> prompt ids + SamplingParams ->
engine streams -> OpenAI JSON or SSE chunks.

Contract: every validation error raises before the engine sees the request; a request that
reached the engine is aborted in it as soon as its client goes away (a cancelled stream, or
a disconnect noticed while a non-streaming request runs). Usage is recorded once, here, for
every path including streaming.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from fleetlm.openai import format as fmt
from fleetlm.api.engine_streams import collect, merged
from fleetlm.openai.errors import APIError, error_body
from fleetlm.api.metrics import Metrics
from fleetlm.openai.protocol import ChatCompletionRequest, CompletionRequest
from fleetlm.openai.tool_calls import ChoiceDeltas, ToolSession, prompt_messages, tool_session
from fleetlm.backends.tool_budget import select_tools_for_budget
from fleetlm.engine.async_engine import AsyncLLM
from fleetlm.engine.errors import PromptTooLongError
from fleetlm.engine.outputs import RequestOutput
from fleetlm.engine.sampling_params import SamplingParams

@dataclass
class LocalModel:
    """A model id served by the in-process engine."""

    model_id: str
    llm: AsyncLLM
    created: int

    @property
    def max_model_len(self) -> int:
        return self.llm.engine.max_model_len


class LocalTarget:
    """The in-process engine as a catalog Target."""

    def __init__(self, serving: "Serving"):
        self.serving = serving
        self.model_id = serving.model.model_id

    def card(self, created: int) -> dict:
        return {"id": self.model_id, "object": "model", "created": created, "owned_by": "fleetlm",
                "max_model_len": self.serving.model.max_model_len}

    async def chat(self, req, raw):
        return await self.serving.chat(req, raw)

    async def complete(self, req, raw):
        return await self.serving.complete(req, raw)


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class Serving:
    def __init__(self, model: LocalModel, metrics: Metrics, structured=None, max_tools: int | None = None):
        self.model = model
        self.metrics = metrics
        self.structured = structured  # callable(response_format) -> StructuredOutput | None
        self.max_tools = max_tools  # tool budget (see tool_calls.select_tools_for_budget); None: no limit
        self.tokenizer = model.llm.tokenizer

    # ---- request -> engine inputs ----------------------------------------------------
    def chat_prompt_ids(self, req: ChatCompletionRequest, tools: ToolSession | None = None) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, f"model {req.model!r} has no chat template; use /v1/completions",
                           param="messages")
        messages = prompt_messages(req, tools)
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja raise_exception: roles that do not alternate, ...
            raise APIError(400, f"messages cannot be formatted for this model: {exc}", param="messages")
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def completion_prompts(self, req: CompletionRequest) -> tuple[list[list[int]], list[str | None]]:
        p = req.prompt
        if isinstance(p, str):
            texts = [p]
        elif isinstance(p[0], str):
            texts = list(p)
        elif isinstance(p[0], int):
            return [list(p)], [None]
        else:
            return [list(x) for x in p], [None] * len(p)
        if any(not t for t in texts):
            raise APIError(400, "prompt must not be empty", param="prompt")
        return [self.tokenizer(t).input_ids for t in texts], texts

    def sampling_params(self, req, prompt_len: int, *, max_tokens: int | None, logprobs: int | None,
                        tools: ToolSession | None = None) -> SamplingParams:
        limit = self.model.max_model_len
        if prompt_len >= limit:
            raise PromptTooLongError(prompt_len, limit)
        if max_tokens is not None and prompt_len + max_tokens > limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you "
                                f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the prompt, "
                                f"{max_tokens} for the completion). Reduce the prompt or max_tokens.",
                           param="max_tokens", code="context_length_exceeded")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if any(not s for s in stop):
            raise APIError(400, "stop strings must not be empty", param="stop")
        structured = self.structured(req.response_format) if (self.structured and req.response_format) else None
        if req.response_format is not None and req.response_format.type != "text" and self.structured is None:
            raise APIError(400, "response_format is not supported by this server", param="response_format")
        if tools is not None and tools.grammar is not None:
            if structured is not None:
                raise APIError(400, "response_format cannot be combined with tools unless tool_choice is 'none'",
                               param="response_format")
            structured = self._tool_grammar(tools)
        extra = {"structured": structured} if structured is not None else {}
        return SamplingParams(
            n=req.n, max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0, min_p=req.min_p or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty, seed=req.seed, stop=stop, logprobs=logprobs,
            ignore_eos=req.ignore_eos, **extra)

    def _tool_grammar(self, tools: ToolSession):
        """The tools' grammar spec, compiled now so that a schema llguidance rejects is a 400 on `tools`."""
        from fleetlm.engine.structured import GrammarError, StructuredOutput

        spec = StructuredOutput("grammar", tools.grammar)
        try:
            self.model.llm.engine.grammar().compile(spec)
        except GrammarError as exc:
            raise APIError(400, f"tool parameters cannot be enforced: {exc}", param="tools") from None
        return spec

    # ---- engine streams --------------------------------------------------------------
    def _record(self, endpoint: str, finals, prompt_lens, t0: float) -> dict:
        prompt_tokens = sum(prompt_lens)
        completion_tokens = sum(len(c.token_ids) for o in finals.values() for c in o.outputs)
        cached = sum(o.num_cached_tokens for o in finals.values())
        self.metrics.observe_request(endpoint, finals.values(), prompt_tokens, completion_tokens, t0)
        return fmt.usage(prompt_tokens, completion_tokens, cached)

    # ---- chat ------------------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest, raw: Request, lora_request=None):
        t0 = time.monotonic()
        tools = tool_session(req, max_tools=self.max_tools, select=select_tools_for_budget)
        ids = self.chat_prompt_ids(req, tools)
        want_lp = req.logprobs or req.top_logprobs is not None
        top = req.top_logprobs or 0
        params = self.sampling_params(req, len(ids), max_tokens=req.max_completion_tokens or req.max_tokens,
                                      logprobs=top if want_lp else None, tools=tools)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            return self._stream(self._chat_events(req, ids, params, rid, t0, tools, lora_request))
        finals = await collect(self.model.llm, [ids], params, rid, raw, lora_request=lora_request,
                               stop=tools.reply_over if tools is not None else None)
        out = finals[0]
        choices = []
        for c in out.outputs:
            message, finish = tools.message(c.text, c.finish_reason) if tools is not None else \
                ({"role": "assistant", "content": c.text}, _finish(c.finish_reason))
            choices.append({
                "index": c.index, "message": message,
                "logprobs": fmt.chat_logprobs(self.tokenizer, c.logprobs) if want_lp else None,
                "finish_reason": finish})
        use = self._record("chat", finals, [len(ids)], t0)
        return JSONResponse(fmt.envelope("chat.completion", rid, req.model, choices, use))

    async def _chat_events(self, req, ids, params, rid, t0, tools: ToolSession | None,
                           lora_request) -> AsyncIterator[str]:
        created = int(time.time())
        streams: dict[int, ChoiceDeltas] = {}
        sent_lp: dict[int, int] = {}
        want_lp = params.logprobs is not None
        finals: dict[int, RequestOutput] = {}
        stopping = False
        async for _, out in merged(self.model.llm, [ids], params, rid, lora_request=lora_request):
            finals[0] = out
            for c in out.outputs:
                stream = streams.setdefault(c.index, ChoiceDeltas(tools))
                deltas, finish = stream.update(c.text, c.finish_reason)
                for k, delta in enumerate(deltas):  # several when a call starts: its header, then arguments
                    last = k == len(deltas) - 1
                    choice = {"index": c.index, "delta": delta, "logprobs": None,
                              "finish_reason": finish if last else None}
                    n_lp = sent_lp.setdefault(c.index, 0)
                    if want_lp and c.logprobs and len(c.logprobs) > n_lp:
                        choice["logprobs"] = fmt.chat_logprobs(self.tokenizer, c.logprobs[n_lp:])
                        sent_lp[c.index] = len(c.logprobs)
                    yield sse(fmt.envelope("chat.completion.chunk", rid, req.model, [choice], created=created))
            if not (out.finished or stopping) and len(streams) == params.n and all(s.done for s in streams.values()):
                stopping = True  # every choice ended with a repeated tool call: stop generating
                self.model.llm.abort(f"{rid}-0")
        use = self._record("chat", finals, [len(ids)], t0)
        if req.stream_options and req.stream_options.include_usage:
            yield sse(fmt.envelope("chat.completion.chunk", rid, req.model, [], use, created))
        yield sse("[DONE]")

    # ---- completions -----------------------------------------------------------------
    async def complete(self, req: CompletionRequest, raw: Request, lora_request=None):
        t0 = time.monotonic()
        if req.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        prompts, texts = self.completion_prompts(req)
        longest = max(prompts, key=len)
        max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default for completions
        params = self.sampling_params(req, len(longest), max_tokens=max_tokens, logprobs=req.logprobs)
        rid = f"cmpl-{uuid.uuid4().hex}"
        echo = [t if t is not None else self.tokenizer.decode(p) for t, p in zip(texts, prompts)] \
            if req.echo else [""] * len(prompts)
        if req.stream:
            return self._stream(self._completion_events(req, prompts, params, rid, t0, echo, lora_request))
        finals = await collect(self.model.llm, prompts, params, rid, raw, lora_request=lora_request)
        choices = []
        for i in range(len(prompts)):
            for c in finals[i].outputs:
                choices.append({
                    "index": i * req.n + c.index, "text": echo[i] + c.text,
                    "logprobs": fmt.completion_logprobs(self.tokenizer, c.logprobs, len(echo[i]))
                    if req.logprobs is not None else None,
                    "finish_reason": _finish(c.finish_reason)})
        use = self._record("completions", finals, [len(p) for p in prompts], t0)
        return JSONResponse(fmt.envelope("text_completion", rid, req.model, choices, use))

    async def _completion_events(self, req, prompts, params, rid, t0, echo, lora_request) -> AsyncIterator[str]:
        created = int(time.time())
        sent_text: dict[int, int] = {}
        sent_lp: dict[int, int] = {}
        finals: dict[int, RequestOutput] = {}
        async for i, out in merged(self.model.llm, prompts, params, rid, lora_request=lora_request):
            finals[i] = out
            for c in out.outputs:
                idx = i * req.n + c.index
                first = idx not in sent_text
                n_text, n_lp = sent_text.setdefault(idx, 0), sent_lp.setdefault(idx, 0)
                delta = (echo[i] if first else "") + c.text[n_text:]
                if not (delta or c.finish_reason):
                    continue
                choice = {"index": idx, "text": delta, "logprobs": None, "finish_reason": _finish(c.finish_reason)}
                if req.logprobs is not None and c.logprobs and len(c.logprobs) > n_lp:
                    choice["logprobs"] = fmt.completion_logprobs(self.tokenizer, c.logprobs[n_lp:])
                    sent_lp[idx] = len(c.logprobs)
                sent_text[idx] = len(c.text)
                yield sse(fmt.envelope("text_completion", rid, req.model, [choice], created=created))
        use = self._record("completions", finals, [len(p) for p in prompts], t0)
        if req.stream_options and req.stream_options.include_usage:
            yield sse(fmt.envelope("text_completion", rid, req.model, [], use, created))
        yield sse("[DONE]")

    @staticmethod
    def _stream(events: AsyncIterator[str]) -> StreamingResponse:
        # Starlette cancels this iterator when the client disconnects; the engine stream's
        # `finally` then aborts the request, which frees its KV blocks.
        async def guarded():
            try:
                async for e in events:
                    yield e
            except Exception as exc:  # headers are sent: report in-band, as OpenAI does
                yield sse(error_body(500, f"generation failed: {exc}"))
                yield sse("[DONE]")

        return StreamingResponse(guarded(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def response_format_to_structured(response_format):
    """OpenAI `response_format` -> StructuredOutput (None for plain text). The schema itself
    is compiled, and so checked, when the engine validates the request."""
    from fleetlm.engine.structured import StructuredOutput

    return StructuredOutput.from_response_format(response_format.model_dump(by_alias=True, exclude_none=True))


def _finish(reason: str | None) -> str | None:
    return {"abort": "stop"}.get(reason, reason)
