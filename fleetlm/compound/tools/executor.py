"""Runs a Plan: every call whose inputs are ready starts at once (asyncio), as in
LLMCompiler's task-fetching unit.

Contract:
* A call starts when every call it references has succeeded; its references are replaced
  by those results (`plan.substitute`). With `max_concurrency=1` calls run one at a time in
  plan order: the sequential baseline, through the same code.
* Each attempt is bounded by `call_timeout_s`; a timeout or an exception is retried up to
  `retries` more times (after `retry_backoff_s`, doubling), except `ToolArgumentError` and
  unresolvable references, which the same call would hit again.
* A call that still fails does not stop the plan: its error is its result in the trace (so
  the joiner sees it and can replan), and calls that depend on it are skipped with an error
  naming the failed input. Unknown tools fail the same way.
* The trace lists every call in plan order with start/end (seconds since the plan started),
  duration, attempts and error; `results` holds the successful calls' results by id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetlm.compound.tools.plan import Plan, PlanError, Ref, Template, substitute
from fleetlm.compound.tools.registry import ToolArgumentError

ToolFn = Callable[..., Awaitable[Any]]  # awaited with the call's keyword arguments


@dataclass(frozen=True, kw_only=True)
class ExecutorConfig:
    call_timeout_s: float = 30.0  # per attempt
    retries: int = 0  # extra attempts after a failure
    retry_backoff_s: float = 0.0  # wait before the first retry; doubles each time
    max_concurrency: int | None = None  # None: no limit; 1: one call at a time

    def __post_init__(self):
        if self.call_timeout_s <= 0:
            raise ValueError(f"call_timeout_s must be > 0, got {self.call_timeout_s}")
        if self.retries < 0 or self.retry_backoff_s < 0:
            raise ValueError("retries and retry_backoff_s must be >= 0")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1 or None, got {self.max_concurrency}")


@dataclass
class CallRecord:
    id: str
    tool: str
    args: Any  # resolved arguments (the plan's, unresolved, when they could not be resolved)
    start_s: float | None = None  # since the plan started; None when the call never ran
    end_s: float | None = None
    attempts: int = 0
    error: str | None = None  # None on success
    result: Any = None

    @property
    def duration_s(self) -> float | None:
        return None if self.start_s is None else self.end_s - self.start_s

    def to_json(self) -> dict:
        """JSON-safe: unresolved references as their text, odd results via str()."""
        def r(v):
            return None if v is None else round(v, 6)

        return {"id": self.id, "tool": self.tool, "args": _jsonable(self.args), "start_s": r(self.start_s),
                "end_s": r(self.end_s), "duration_s": r(self.duration_s), "attempts": self.attempts,
                "error": self.error, "result": _jsonable(self.result)}


@dataclass
class Execution:
    results: dict[str, Any]  # call id -> result, successful calls only
    trace: list[CallRecord]  # plan order
    wall_s: float
    errors: dict[str, str] = field(default_factory=dict)  # call id -> error, failed or skipped calls

    @property
    def ok(self) -> bool:
        return not self.errors


async def execute(plan: Plan, tools: Mapping[str, ToolFn], config: ExecutorConfig = ExecutorConfig()) -> Execution:
    """Run `plan` with `tools` (name -> async callable, e.g. a ToolRegistry's tools)."""
    t0 = time.monotonic()
    records = {c.id: CallRecord(c.id, c.tool, c.args) for c in plan.calls}
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    pending = list(plan.calls)  # plan order, so a limit of 1 runs the plan as written
    running: dict[asyncio.Task, str] = {}
    limit = config.max_concurrency or len(plan.calls) or 1

    async def run(call) -> None:
        rec = records[call.id]
        rec.start_s = time.monotonic() - t0
        try:
            rec.args = substitute(call.args, results)
            fn = tools.get(call.tool)
            if fn is None:
                raise PlanError(f"unknown tool {call.tool!r}")
            rec.result = await _attempts(fn, rec, config)
            results[call.id] = rec.result
        except Exception as exc:  # fed back as the call's result: the plan goes on
            rec.error = _describe(exc, config)
            errors[call.id] = rec.error
        finally:
            rec.end_s = time.monotonic() - t0

    try:
        while pending or running:
            for call in list(pending):
                if len(running) >= limit:
                    break
                failed = [d for d in call.deps if d in errors or d not in records]
                if failed:
                    pending.remove(call)
                    why = errors.get(failed[0], "no such call in the plan")
                    records[call.id].error = errors[call.id] = f"skipped: input ${failed[0]} failed ({why})"
                    continue
                if all(d in results for d in call.deps):
                    pending.remove(call)
                    running[asyncio.create_task(run(call))] = call.id
                elif config.max_concurrency == 1:
                    break  # one at a time means in plan order
            if not running:
                if pending:  # cannot happen for a parsed plan: refs point backwards
                    for call in pending:
                        records[call.id].error = errors[call.id] = "skipped: inputs never became ready"
                    pending.clear()
                break
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                running.pop(task)
    finally:
        for task in running:  # cancelled from outside (client gone): stop the tools too
            task.cancel()
    return Execution(results, [records[c.id] for c in plan.calls], time.monotonic() - t0, errors)


async def _attempts(fn: ToolFn, rec: CallRecord, config: ExecutorConfig) -> Any:
    backoff = config.retry_backoff_s
    while True:
        rec.attempts += 1
        try:
            return await asyncio.wait_for(fn(**rec.args), config.call_timeout_s)
        except (ToolArgumentError, PlanError, TypeError):
            raise  # the same arguments fail the same way
        except Exception:
            if rec.attempts > config.retries:
                raise
        if backoff:
            await asyncio.sleep(backoff)
            backoff *= 2


def _describe(exc: BaseException, config: ExecutorConfig) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"timed out after {config.call_timeout_s} s"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, PlanError) else str(exc)


def _jsonable(v):
    if isinstance(v, (Ref, Template)):
        return str(v) if isinstance(v, Ref) else "".join(map(str, v.parts))
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)
