"""The in-process engine as Targets: its base model (`gemma-3-270m`, a folder's name) and its
LoRA adapters (`<base>:<adapter>`).

Contract: `chat` / `complete` validate the request (every mistake raises an `APIError` before
the engine sees it), run it on the engine and yield typed chunks: a streamed request one
chunk per OpenAI delta as tokens come, a non-streamed one a single chunk holding the whole
answer; either way a last chunk carries `Usage` (with prefix-cache hits, priced at the
model's `pricing`) and the engine's timing, and a stream's content chunks carry the running
usage so far (what a stream cut short has cost). Engine errors become `APIError`s here (a
stopped engine is a 503, so a router falls back). Leaving the iterator early (a cancelled
task, a closed stream) aborts every engine request it started, which frees their KV blocks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from fleetlm.backends.adapters import AdapterRegistry
from fleetlm.backends.engine_streams import merged
from fleetlm.backends.local_inputs import ChatInputs, CompletionInputs, EngineInputs
from fleetlm.engine.async_engine import AsyncLLM, EngineDeadError
from fleetlm.engine.errors import InvalidRequestError, PromptTooLongError, RequestFailedError
from fleetlm.engine.lora import LoRANotFoundError, LoRARequest
from fleetlm.openai import format as fmt
from fleetlm.openai.chunks import (
    ChatChunk,
    CompletionChunk,
    CompletionDelta,
    ModelCard,
    Pricing,
    Timing,
    Usage,
)
from fleetlm.openai.errors import APIError, BadRequestError, NotFoundError, UnavailableError
from fleetlm.openai.protocol import ChatCompletionRequest, CompletionRequest
from fleetlm.openai.tool_calls import ChoiceDeltas


class LocalTarget:
    """One model id on the local engine: the base model (`lora` None) or one adapter."""

    def __init__(self, model_id: str, llm: AsyncLLM, inputs: EngineInputs, *, lora: LoRARequest | None = None,
                 base_id: str | None = None, pricing: Pricing | None = None):
        self.model_id, self.llm, self.inputs, self.lora = model_id, llm, inputs, lora
        self.base_id = base_id or model_id  # the engine's own model id (admission counts per engine)
        self.pricing = pricing or Pricing()
        self.tokenizer = inputs.tokenizer

    def card(self) -> ModelCard:
        return ModelCard(self.model_id, max_model_len=self.inputs.engine.max_model_len,
                         parent=self.base_id if self.lora else None, root=self.lora.path if self.lora else None,
                         pricing=self.pricing)

    def engines(self) -> frozenset[str]:
        return frozenset({self.base_id})

    async def _prepare(self, build, req):
        """Engine inputs (templating, tokenizing, compiling a grammar) in a worker thread, so a
        large request never stalls the event loop, within the inputs' time bound."""
        limit = self.inputs.prepare_timeout_s
        try:
            return await asyncio.wait_for(asyncio.to_thread(build, req), limit)
        except TimeoutError:
            param = "tools" if getattr(req, "tools", None) else "response_format" if req.response_format else None
            raise BadRequestError(f"preparing this request took over {limit} s (a grammar too large to "
                                  "compile in time?); simplify its schema or tools", param=param) from None

    # ---- chat ------------------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest) -> AsyncIterator[ChatChunk]:
        with _engine_errors():
            inp = await self._prepare(self.inputs.chat, req)
            rid = f"chatcmpl-{uuid.uuid4().hex}"
            chunks = self._chat_stream(inp, rid) if req.stream else self._chat_whole(inp, rid)
            async for chunk in chunks:
                yield chunk

    async def _chat_whole(self, inp: ChatInputs, rid: str) -> AsyncIterator[ChatChunk]:
        finals, stopping = {}, False
        async for i, out in merged(self.llm, [inp.ids], inp.params, rid, lora_request=self.lora):
            finals[i] = out
            if inp.tools is not None and not stopping and not out.finished and inp.tools.reply_over(out):
                stopping = True  # every choice ended with a repeated call; the engine ends it ("abort")
                self.llm.abort(f"{rid}-{i}")
        want_lp = inp.params.logprobs is not None
        choices = []
        for c in finals[0].outputs:
            if inp.tools is not None:
                message, finish = inp.tools.message(c.text, c.finish_reason)
            else:
                message, finish = {"role": "assistant", "content": c.text}, _finish(c.finish_reason)
            lp = fmt.chat_logprobs(self.tokenizer, c.logprobs or []) if want_lp else None
            choices.append(fmt.parse_chat_delta(c.index, message, finish, lp))
        yield ChatChunk(served_by=self.model_id, choices=choices, **_totals(finals, [len(inp.ids)], self.pricing))

    async def _chat_stream(self, inp: ChatInputs, rid: str) -> AsyncIterator[ChatChunk]:
        streams: dict[int, ChoiceDeltas] = {}
        sent_lp: dict[int, int] = {}
        want_lp = inp.params.logprobs is not None
        finals, stopping = {}, False
        async for _, out in merged(self.llm, [inp.ids], inp.params, rid, lora_request=self.lora):
            finals[0] = out
            for c in out.outputs:
                stream = streams.setdefault(c.index, ChoiceDeltas(inp.tools))
                deltas, finish = stream.update(c.text, c.finish_reason)
                for k, delta in enumerate(deltas):  # several when a call starts: its header, then arguments
                    lp, n_lp = None, sent_lp.setdefault(c.index, 0)
                    if want_lp and c.logprobs and len(c.logprobs) > n_lp:
                        lp = fmt.chat_logprobs(self.tokenizer, c.logprobs[n_lp:])
                        sent_lp[c.index] = len(c.logprobs)
                    last = k == len(deltas) - 1
                    yield ChatChunk(served_by=self.model_id, usage=_running(finals, [len(inp.ids)], self.pricing),
                                    choices=[fmt.parse_chat_delta(c.index, delta, finish if last else None, lp)])
            every_done = len(streams) == inp.params.n and all(s.done for s in streams.values())
            if not (out.finished or stopping) and every_done:
                stopping = True  # every choice ended with a repeated tool call: stop generating
                self.llm.abort(f"{rid}-0")
        yield ChatChunk(served_by=self.model_id, **_totals(finals, [len(inp.ids)], self.pricing))

    # ---- completions -----------------------------------------------------------------
    async def complete(self, req: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        with _engine_errors():
            inp = await self._prepare(self.inputs.completion, req)
            rid = f"cmpl-{uuid.uuid4().hex}"
            chunks = self._completion_stream(inp, rid, req.n) if req.stream else self._completion_whole(inp, rid, req.n)
            async for chunk in chunks:
                yield chunk

    async def _completion_whole(self, inp: CompletionInputs, rid: str, n: int) -> AsyncIterator[CompletionChunk]:
        finals = {}
        async for i, out in merged(self.llm, inp.prompts, inp.params, rid, lora_request=self.lora):
            finals[i] = out
        want_lp = inp.params.logprobs is not None
        choices = [CompletionDelta(i * n + c.index, inp.echo[i] + c.text,
                                   fmt.completion_logprobs(self.tokenizer, c.logprobs or [], len(inp.echo[i]))
                                   if want_lp else None, _finish(c.finish_reason))
                   for i in range(len(inp.prompts)) for c in finals[i].outputs]
        yield CompletionChunk(served_by=self.model_id, choices=choices,
                              **_totals(finals, [len(p) for p in inp.prompts], self.pricing))

    async def _completion_stream(self, inp: CompletionInputs, rid: str, n: int) -> AsyncIterator[CompletionChunk]:
        sent_text: dict[int, int] = {}
        sent_lp: dict[int, int] = {}
        finals, lens = {}, [len(p) for p in inp.prompts]
        async for i, out in merged(self.llm, inp.prompts, inp.params, rid, lora_request=self.lora):
            finals[i] = out
            for c in out.outputs:
                idx = i * n + c.index
                first = idx not in sent_text
                n_text, n_lp = sent_text.setdefault(idx, 0), sent_lp.setdefault(idx, 0)
                text = (inp.echo[i] if first else "") + c.text[n_text:]
                if not (text or c.finish_reason):
                    continue
                lp = None
                if inp.params.logprobs is not None and c.logprobs and len(c.logprobs) > n_lp:
                    lp = fmt.completion_logprobs(self.tokenizer, c.logprobs[n_lp:])
                    sent_lp[idx] = len(c.logprobs)
                sent_text[idx] = len(c.text)
                yield CompletionChunk(served_by=self.model_id, usage=_running(finals, lens, self.pricing),
                                      choices=[CompletionDelta(idx, text, lp, _finish(c.finish_reason))])
        yield CompletionChunk(served_by=self.model_id, **_totals(finals, lens, self.pricing))


class AdapterSource:
    """Catalog entries made on demand: `<base>:<name>` for every adapter in the registry."""

    def __init__(self, base: LocalTarget, registry: AdapterRegistry):
        self.base, self.registry = base, registry

    def resolve(self, model: str) -> LocalTarget | None:
        base, sep, name = model.partition(":")
        if not sep or base != self.base.model_id:
            return None
        return self._target(model, self.registry.get(name, model))

    def cards(self) -> list[ModelCard]:
        out = []
        for name in self.registry.names():
            try:
                out.append(self._target(f"{self.base.model_id}:{name}", self.registry.get(name, name)).card())
            except APIError:  # removed between listing and lookup
                pass
        return out

    def _target(self, model_id: str, lora: LoRARequest) -> LocalTarget:
        b = self.base
        return LocalTarget(model_id, b.llm, b.inputs, lora=lora, base_id=b.model_id, pricing=b.pricing)


@contextmanager
def _engine_errors() -> Iterator[None]:
    """The engine's typed errors as the OpenAI errors every Target raises."""
    try:
        yield
    except PromptTooLongError as exc:
        raise BadRequestError(str(exc), param=exc.param, code="context_length_exceeded") from None
    except LoRANotFoundError as exc:
        raise NotFoundError(str(exc), param=exc.param) from None
    except InvalidRequestError as exc:  # bad parameters, grammars, adapters
        raise BadRequestError(str(exc), param=exc.param) from None
    except EngineDeadError as exc:
        raise UnavailableError(f"the engine is not running: {exc}", status=503, code=None) from None
    except RequestFailedError as exc:  # the engine's own failure on this request; it serves the others
        raise APIError(500, str(exc), code="engine_error") from None


def _running(finals: dict, prompt_lens: list[int], pricing: Pricing) -> Usage:
    """Usage so far: every prompt, the tokens generated up to now, at `pricing`."""
    outs = list(finals.values())
    p, c = sum(prompt_lens), sum(len(c.token_ids) for o in outs for c in o.outputs)
    return Usage(p, c, sum(o.num_cached_tokens for o in outs), pricing.cost(p, c))


def _totals(finals: dict, prompt_lens: list[int], pricing: Pricing) -> dict:
    """The last chunk's usage and engine timing, from the engine's final outputs."""
    outs = list(finals.values())
    usage = _running(finals, prompt_lens, pricing)
    firsts = [o.metrics.first_token_time - o.metrics.arrival_time for o in outs
              if o.metrics is not None and o.metrics.first_token_time is not None]
    tpots = []
    for o in outs:
        m, n = o.metrics, max((len(c.token_ids) for c in o.outputs), default=0)
        if m is not None and m.first_token_time is not None and m.finished_time and n > 1:
            tpots.append((m.finished_time - m.first_token_time) / (n - 1))
    timing = Timing(max(0.0, min(firsts)) if firsts else None, sum(tpots) / len(tpots) if tpots else None)
    return {"usage": usage, "timing": timing}


def _finish(reason: str | None) -> str | None:
    return {"abort": "stop"}.get(reason, reason)
