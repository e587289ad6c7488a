"""Compound programs: async Python functions of a `Ctx`, served as `compound/<name>`.

    @program("vote")
    async def vote(ctx: Ctx, messages, *, model="gemma-3-270m", k=5):
        drafts = await ctx.fork(model, messages, n=k, temperature=0.7)
        answer, votes = majority(drafts)
        ctx.step("vote", votes=votes)
        return answer

Contract: `Ctx` is a program's only door to the fleet. `chat` / `complete` call any model id
(local, adapter, upstream, router, another program) through the catalog and return the whole
answer as a value; `fork` samples n answers to one prompt in one request (the local engine
computes the shared prompt once); `select` picks one of fixed choices; `gather` runs calls
concurrently; `tool` and `plan` run the program's own tools (one call, or a plan of calls
run as a DAG); `step` records a trace event (streamed to the client as `fleetlm_step`);
`stream` hands the final answer over to a sub-model, token by token. Every call is recorded
(`calls`: model asked, model served, usage), its usage counts against the request's
`Budget` (calls, tokens, USD, seconds; over it: `BudgetExceededError`, a 4xx naming the
limit), and identical deterministic calls (temperature 0, or the same `rollout` id) are
answered from a per-request cache. Nothing here knows HTTP; a cancelled request cancels
every call in flight, since they all run in its task.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fleetlm.config import Budget
from fleetlm.openai.chunks import (
    ChatChoice,
    ChatResult,
    CompletionResult,
    SubCall,
    Usage,
    collect_chat,
    collect_completion,
)
from fleetlm.openai.errors import APIError, BadRequestError
from fleetlm.openai.protocol import ChatCompletionRequest, CompletionRequest

PROGRAM_ATTR = "__fleetlm_program__"
TOOLS_ATTR = "__fleetlm_program_tools__"
MAX_CACHE = 256  # cached calls per request


def program(name: str, *, tools: bool = False):
    """Mark an async function `fn(ctx, messages, **params) -> str | ChatMessage | Streamed`
    as the program `name` (served as `compound/<name>`); loaders find marked functions in
    modules. `tools=True`: the program takes requests with `tools` (it finds them in
    `ctx.tools` and may answer with a ChatMessage holding tool calls); other programs refuse
    them, so a router passes them over."""
    def mark(fn):
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"program {name!r}: {fn.__qualname__} must be an async function")
        setattr(fn, PROGRAM_ATTR, name)
        setattr(fn, TOOLS_ATTR, tools)
        return fn
    return mark


class ProgramError(APIError):
    """500 `program_error`: the program itself failed (raised, or called a model id the fleet
    does not serve); the message says how."""

    def __init__(self, message: str):
        super().__init__(500, message, code="program_error")


class BudgetExceededError(APIError):
    """400 `budget_exceeded`: the program spent its request's budget; `param` names the limit."""

    def __init__(self, program: str, limit: str, value, spent):
        super().__init__(400, f"{program} stopped: its budget {limit}={value} is spent ({spent})",
                         param=f"budget.{limit}", code="budget_exceeded")


@dataclass
class Step:
    name: str
    t_s: float  # seconds since the request started
    data: dict = field(default_factory=dict)


@dataclass
class Streamed:
    """What `ctx.stream(...)` returns: a program that returns it streams that sub-model's
    answer as its own."""

    model: str
    request: ChatCompletionRequest


Messages = str | list


def as_messages(messages: Messages) -> list[dict]:
    """A user message as text, or a list of message dicts / request ChatMessages, as dicts."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [m if isinstance(m, dict) else m.model_dump(exclude_none=True) for m in messages]


class Ctx:
    def __init__(self, *, program_id: str, resolve: Callable, budget: Budget, default_model: str,
                 on_step: Callable[[Step], None] | None = None, tools: dict | None = None,
                 registry=None, tool_timeout_s: float = 30.0, tool_retries: int = 0):
        self.program_id = program_id  # compound/<name>
        self._resolve = resolve  # model id -> Target (the catalog's resolve)
        self.default_model = default_model  # the server's local base model: a program's default
        # the request's `tools`, `tool_choice`, `parallel_tool_calls` (pass on with **ctx.tools); None: no tools
        self.tools = tools
        self.registry = registry  # the program's own tools (a ToolRegistry): ctx.tool, ctx.plan
        self.tool_timeout_s, self.tool_retries = tool_timeout_s, tool_retries
        self.trace: dict = {}  # fields a program adds to (or replaces in) its fleetlm_trace
        self.budget = budget
        self._on_step = on_step
        self.t0 = time.monotonic()
        self.calls: list[SubCall] = []
        self.steps: list[Step] = []
        self._cache: dict[str, ChatResult | CompletionResult] = {}
        self._in_flight = 0  # calls started, counted against max_calls before they run

    # ---- the fleet -------------------------------------------------------------------
    async def chat(self, model: str, messages: Messages, *, rollout: int | None = None, **params) -> ChatResult:
        """One chat call, its whole answer (`.text` is the first choice's content)."""
        req = self._request(ChatCompletionRequest, model=model, messages=as_messages(messages), **params)
        return await self._call(model, req, collect_chat, "chat", rollout)

    async def complete(self, model: str, prompt, *, rollout: int | None = None, **params) -> CompletionResult:
        """One text completion (`.text` is the first choice's text)."""
        req = self._request(CompletionRequest, model=model, prompt=prompt, **params)
        return await self._call(model, req, collect_completion, "complete", rollout)

    async def fork(self, model: str, messages: Messages, *, n: int, **params) -> list[str]:
        """n sampled answers to one prompt: one request with `n` (on the local engine the
        prompt is computed once for all samples); Targets that refuse `n` get n calls."""
        return [c.message.content or "" for c in await self.fork_choices(model, messages, n=n, **params)]

    async def fork_choices(self, model: str, messages: Messages, *, n: int, **params) -> list[ChatChoice]:
        """As `fork`, each sample whole: content, tool calls, logprobs, finish reason."""
        if not 1 <= n <= 16:
            raise BadRequestError(f"{self.program_id}: fork n must be in 1..16, got {n}", param="n")
        try:
            return (await self.chat(model, messages, n=n, **params)).choices
        except APIError as exc:
            if exc.status != 400 or exc.param != "n":
                raise
        results = await self.gather(*(self.chat(model, messages, rollout=i, **params) for i in range(n)))
        return [r.choices[0] for r in results]

    async def select(self, model: str, messages: Messages, choices: list[str], *, by: str = "auto",
                     **params) -> str:
        """One of `choices`.
        - by="logprob": every choice scored by its log-probability as the answer, on a local
          model: the choice is forced by a grammar and scored with the model's own token
          log-probabilities (taken before the grammar), one call per choice sharing the
          prompt's KV; the highest sum wins (ties: the first). At most 16 choices.
        - by="grammar": one decode under a grammar that allows only the choices (any model).
        - "auto": logprob on a local model (its card has a context length), else grammar.
        A step records how it chose (and the scores)."""
        if not choices or not all(isinstance(c, str) for c in choices):
            raise BadRequestError(f"{self.program_id}: select needs a list of strings", param="choices")
        if by == "auto":
            by = "logprob" if self.target(model).card().max_model_len is not None and len(choices) <= 16 else "grammar"
        if by == "logprob":
            if len(choices) > 16:
                raise BadRequestError(f"{self.program_id}: select by logprob takes at most 16 choices",
                                      param="choices")
            scores = await self.gather(*(self._choice_logprob(model, messages, c, i, params)
                                         for i, c in enumerate(choices)))
            best = max(range(len(choices)), key=lambda i: scores[i])
            self.step("select", by="logprob", scores={c: round(x, 4) for c, x in zip(choices, scores)})
            return choices[best]
        if by != "grammar":
            raise BadRequestError(f"{self.program_id}: select by {by!r}: use auto, logprob or grammar", param="by")
        result = await self.chat(model, messages, response_format=_enum(choices), temperature=0, **params)
        try:
            choice = json.loads(result.text)
        except ValueError:
            choice = None
        self.step("select", by="grammar")
        return choice if choice in choices else choices[0]  # cut by max_tokens: the first choice

    async def _choice_logprob(self, model: str, messages: Messages, choice: str, i: int, params: dict) -> float:
        """log P(choice as the answer | messages): its JSON text forced, its tokens' logprobs summed."""
        want, params = json.dumps(choice), dict(params)
        limit = params.pop("max_tokens", None) or len(want.encode()) + 8  # a token is at least a byte
        r = await self.chat(model, messages, response_format=_enum([choice]), temperature=0, logprobs=True,
                            max_tokens=limit, rollout=i, **params)
        if r.text != want or not r.choices[0].logprobs:  # cut short: not a whole answer
            return float("-inf")
        return sum(e["logprob"] for e in r.choices[0].logprobs)

    async def gather(self, *calls: Awaitable) -> list:
        """Run calls concurrently; if one fails, the others are cancelled and its error raised."""
        tasks = [asyncio.ensure_future(c) for c in calls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def tool(self, name: str, **args):
        """Run one of the program's tools (`[[program]]`'s `tools`) with the tool timeout; its
        result, or its exception (the program decides what a failure means). A step records it."""
        if self.registry is None or name not in self.registry:
            raise ProgramError(f"{self.program_id} calls tool {name!r}, which it was not given "
                               f"(its tools: {', '.join(t.name for t in self.registry or []) or 'none'})")
        t0, error = time.monotonic(), None
        try:
            return await asyncio.wait_for(self.registry[name](**args), self.tool_timeout_s)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.step("tool", tool=name, args=args, duration_s=round(time.monotonic() - t0, 6), error=error)

    async def plan(self, plan):
        """Run a plan of tool calls (text in fleetlm.compound.tools.plan's format, or a parsed
        `Plan`): independent calls at once, `$N` results passed on, each call with the tool
        timeout and retries; an `executor.Execution`. A plan that does not parse, or names a
        tool the program lacks, raises `PlanError`."""
        from fleetlm.compound.tools.executor import ExecutorConfig, execute
        from fleetlm.compound.tools.plan import parse_plan

        tools = self.registry.tools if self.registry is not None else {}
        if isinstance(plan, str):
            plan = parse_plan(plan, param_order={n: list(t.parameters.get("properties", {})) for n, t in tools.items()})
        plan.validate(tools)
        config = ExecutorConfig(call_timeout_s=self.tool_timeout_s, retries=self.tool_retries)
        execution = await execute(plan, tools, config)
        self.step("plan", calls=[r.to_json() for r in execution.trace], wall_s=round(execution.wall_s, 6))
        return execution

    def stream(self, model: str, messages: Messages, **params) -> Streamed:
        """Return this from a program to stream `model`'s answer to the client as it comes."""
        self._charge_call()
        return Streamed(model, self._request(ChatCompletionRequest, model=model, messages=as_messages(messages),
                                             stream=True, **params))

    def step(self, name: str, **data) -> None:
        """A trace event: in `fleetlm_trace.steps`, and streamed as `fleetlm_step`."""
        s = Step(name, round(self.elapsed_s, 6), json.loads(json.dumps(data, default=str)))
        self.steps.append(s)
        if self._on_step is not None:
            self._on_step(s)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.t0

    @property
    def usage(self) -> Usage:
        """The sum of every call's usage (the program's own usage)."""
        total = Usage()
        for c in self.calls:
            total += Usage(c.usage.prompt_tokens, c.usage.completion_tokens, None, c.usage.cost_usd)
        return total

    # ---- bookkeeping -----------------------------------------------------------------
    def record(self, model: str, served_by: str, usage: Usage) -> None:
        """Count a finished call (also used for a streamed final answer) and check the budget."""
        self.calls.append(SubCall(model, served_by, usage))
        b, u = self.budget, self.usage
        if b.max_tokens is not None and u.total_tokens > b.max_tokens:
            raise BudgetExceededError(self.program_id, "max_tokens", b.max_tokens, f"{u.total_tokens} tokens")
        if b.max_usd is not None and u.cost_usd > b.max_usd:
            raise BudgetExceededError(self.program_id, "max_usd", b.max_usd, f"${u.cost_usd:.6f}")

    def _charge_call(self, count: int = 1) -> None:
        """Count `count` calls (each sample of a fork is one) before they run."""
        if self.budget.max_calls is not None and self._in_flight + count > self.budget.max_calls:
            raise BudgetExceededError(self.program_id, "max_calls", self.budget.max_calls,
                                      f"{self._in_flight} calls made, {count} more asked")
        self._in_flight += count

    def _request(self, cls, **fields):
        try:
            return cls(**fields)
        except ValueError as exc:  # pydantic: a program passed a bad parameter
            raise BadRequestError(f"{self.program_id}: bad call to {fields.get('model')!r}: {exc}") from None

    async def _call(self, model: str, req, collect, kind: str, rollout: int | None):
        key = None
        if req.temperature == 0 or rollout is not None:
            key = json.dumps([kind, req.model_dump(exclude_none=True), rollout], sort_keys=True, default=str)
            if key in self._cache:
                return self._cache[key]
        self._charge_call(getattr(req, "n", 1))
        target = self.target(model)
        try:
            result = await collect(getattr(target, kind)(req))
        except APIError as exc:
            raise APIError(exc.status if exc.status < 500 else 502,
                           f"{self.program_id}: {model} failed (HTTP {exc.status}): {exc.message}",
                           param=exc.param if exc.status < 500 else None, code=exc.code) from None
        self.record(model, result.served_by, result.usage)
        if key is not None and len(self._cache) < MAX_CACHE:
            self._cache[key] = result
        return result

    def target(self, model: str):
        """The Target behind `model`; a model id the fleet does not serve is the program's bug."""
        try:
            target = self._resolve(model)
        except APIError:
            raise ProgramError(f"{self.program_id} calls {model!r}, which this server does not serve") from None
        if target.model_id == self.program_id:
            raise ProgramError(f"{self.program_id} calls itself")
        return target


def majority(answers: list[str], key: Callable[[str], str] = lambda s: s) -> tuple[str, dict[str, int]]:
    """The most common answer by `key` (ties: the one seen first), and the votes per key."""
    if not answers:
        return "", {}
    keys = [key(a) for a in answers]
    votes = Counter(keys)
    best = max(votes, key=lambda k: (votes[k], -keys.index(k)))
    return answers[keys.index(best)], dict(votes)


def _enum(choices: list[str]) -> dict:
    """A response_format allowing exactly one of `choices` (as a JSON string)."""
    return {"type": "json_schema", "json_schema": {"name": "choice", "schema": {"enum": list(choices)}}}
