"""A compound program as a Target: `compound/<name>` runs `fn(ctx, messages, **params)` for
each chat request and answers with what it returns.

Contract: the program runs in the request's task under its `Budget` (`max_seconds` as a
timeout); cancelling the request cancels it and every call it has in flight. A returned
string is the answer (one content chunk, then the finish); a returned ChatMessage may also
hold tool calls (a program marked `tools=True`, for requests with `tools`); a returned
`ctx.stream(...)` is relayed delta by delta as the program's own answer. A streamed request also gets each
`ctx.step` as a chunk with only `fleetlm_step`, which OpenAI clients ignore. The last chunk
carries the program's usage (the sum of its calls'), every call as a `SubCall` (so the
ledger attributes them to the program), and `fleetlm_trace` (steps, calls, wall time).
`APIError`s keep their status; any other exception is a 500 `program_error` naming it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from fleetlm.compound.programs.ctx import (
    TOOLS_ATTR,
    BudgetExceededError,
    Ctx,
    ProgramError,
    Step,
    Streamed,
    as_messages,
)
from fleetlm.config import Budget
from fleetlm.openai.chunks import ChatChunk, ChatDelta, ChatMessage, ModelCard, ToolCallDelta
from fleetlm.openai.errors import APIError, UnsupportedError

log = logging.getLogger("fleetlm.programs")


class ProgramTarget:
    def __init__(self, name: str, fn: Callable, *, resolve: Callable, default_model: str,
                 engines: frozenset[str], params: dict | None = None, budget: Budget | None = None,
                 registry=None, tool_timeout_s: float = 30.0, tool_retries: int = 0, card: ModelCard | None = None):
        self.model_id = f"compound/{name}"
        self.fn, self.params, self.budget = fn, dict(params or {}), budget or Budget()
        self.registry = registry  # the program's own tools (ctx.tool, ctx.plan)
        self.tool_timeout_s, self.tool_retries = tool_timeout_s, tool_retries
        self._card = card
        self.resolve, self.default_model, self._engines = resolve, default_model, engines

    def card(self) -> ModelCard:
        return self._card or ModelCard(self.model_id)

    def engines(self) -> frozenset[str]:
        return self._engines  # a program may call any of them

    async def complete(self, req) -> AsyncIterator:
        raise UnsupportedError(f"{self.model_id} is a chat model; use /v1/chat/completions", param="model")
        yield  # an async generator, like every Target's complete()

    async def chat(self, req) -> AsyncIterator[ChatChunk]:
        takes_tools = getattr(self.fn, TOOLS_ATTR, False)
        for name, bad in (("n", req.n != 1), ("logprobs", req.logprobs), ("tools", req.tools and not takes_tools),
                          ("response_format", req.response_format is not None and req.response_format.type != "text")):
            if bad:
                raise UnsupportedError(f"{self.model_id} does not support `{name}`", param=name)
        steps: asyncio.Queue[Step] = asyncio.Queue()
        tools = {"tools": req.tools, "tool_choice": req.tool_choice, "parallel_tool_calls": req.parallel_tool_calls} \
            if req.tools else None
        ctx = Ctx(program_id=self.model_id, resolve=self.resolve, budget=self.budget, default_model=self.default_model,
                  on_step=steps.put_nowait if req.stream else None,
                  tools={k: v for k, v in tools.items() if v is not None} if tools else None,
                  registry=self.registry, tool_timeout_s=self.tool_timeout_s, tool_retries=self.tool_retries)
        task = asyncio.ensure_future(self._run(ctx, as_messages(req.messages)))
        getter = None
        try:
            while not task.done():
                getter = asyncio.ensure_future(steps.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                yield self._step_chunk(getter.result(), ctx)
            while not steps.empty():
                yield self._step_chunk(steps.get_nowait(), ctx)
            answer = task.result()
            if isinstance(answer, Streamed):
                async for chunk in self._relay(ctx, answer):
                    yield chunk
                return
            if isinstance(answer, str):
                answer = ChatMessage(content=answer)
            calls = [ToolCallDelta(k, c.id, c.name, c.arguments) for k, c in enumerate(answer.tool_calls)] or None
            yield ChatChunk(served_by=self.model_id,
                            choices=[ChatDelta(0, role="assistant", content=answer.content, tool_calls=calls)])
            finish = "tool_calls" if calls else "stop"
            yield ChatChunk(served_by=self.model_id, choices=[ChatDelta(0, finish_reason=finish)], **self._totals(ctx))
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _run(self, ctx: Ctx, messages: list[dict]) -> str | Streamed:
        try:
            async with asyncio.timeout(self.budget.max_seconds):
                answer = await self.fn(ctx, messages, **self.params)
        except TimeoutError:
            raise BudgetExceededError(self.model_id, "max_seconds", self.budget.max_seconds,
                                      f"{ctx.elapsed_s:.1f} s") from None
        except APIError:
            raise
        except Exception as exc:  # the program's own bug: a clean 500 for this request only
            log.exception("%s failed", self.model_id)
            raise ProgramError(f"{self.model_id} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(answer, (str, ChatMessage, Streamed)):
            raise ProgramError(f"{self.model_id} returned {type(answer).__name__}; a program returns a str, "
                               "a ChatMessage or ctx.stream(...)")
        return answer

    async def _relay(self, ctx: Ctx, streamed: Streamed) -> AsyncIterator[ChatChunk]:
        """The sub-model's stream as the program's own: its deltas, then the program's totals."""
        target = ctx.target(streamed.model)
        before, last, served_by = ctx.usage, None, streamed.model
        async for chunk in target.chat(streamed.request):
            last, served_by = chunk.usage or last, chunk.served_by or served_by  # a chunk's usage is the running total
            if chunk.choices:
                yield ChatChunk(served_by=self.model_id, choices=chunk.choices,
                                usage=before + last if last is not None else None)
        if last is not None:
            ctx.record(streamed.model, served_by, last)
        yield ChatChunk(served_by=self.model_id, **self._totals(ctx))

    def _step_chunk(self, step: Step, ctx: Ctx) -> ChatChunk:
        return ChatChunk(served_by=self.model_id, usage=ctx.usage,  # running: a budget may end the stream here
                         extra={"fleetlm_step": {"name": step.name, "t_s": step.t_s, **step.data}})

    def _totals(self, ctx: Ctx) -> dict:
        trace = {"steps": [{"name": s.name, "t_s": s.t_s, **s.data} for s in ctx.steps],
                 "calls": [{"model": c.model, "served_by": c.served_by, "prompt_tokens": c.usage.prompt_tokens,
                            "completion_tokens": c.usage.completion_tokens, "cost_usd": c.usage.cost_usd}
                           for c in ctx.calls],
                 "wall_s": round(ctx.elapsed_s, 6), **ctx.trace}
        return {"usage": ctx.usage, "calls": list(ctx.calls), "extra": {"fleetlm_trace": trace}}
