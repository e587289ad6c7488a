"""`router/<name>`: a Target that picks, per request, which catalog Target serves it.

Contract: `rank(prompt) -> [candidate name, ...]` (best first) comes from a routing policy
(a trained router from `fleetlm.compound.router`, or a fixed preference order). The router
tries the candidates in that order, skipping those cooling down; a candidate that fails
before its first chunk (an `APIError` of status >= 500: unreachable, timeout, an upstream
5xx, a stopped engine) is cooled down for `cooldown_s` (as LiteLLM does) and the next one is
tried, so no request is lost while any candidate is up. A candidate that cannot serve this
kind of request (`UnsupportedError`: `tools` to a program, say) is passed over without a
cooldown. Other client errors (4xx) are raised as they are: another model would reject them too. Once a candidate has yielded a chunk, its
stream is the answer (a later error ends it). The chunks name the model that served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from fleetlm.openai.chunks import ModelCard
from fleetlm.openai.errors import APIError, UnavailableError, UnsupportedError

log = logging.getLogger("fleetlm.router")


def prompt_text(req) -> str:
    """What the policy sees: the last user message (chat) or the first prompt (completions)."""
    if hasattr(req, "messages"):
        users = [m for m in req.messages if m.role == "user"]
        return (users[-1] if users else req.messages[-1]).text()
    p = req.prompt
    return p if isinstance(p, str) else (p[0] if isinstance(p[0], str) else "")


@dataclass
class RouterTarget:
    model_id: str  # router/<name>
    rank: Callable[[str], list[str]]  # prompt -> candidate names, best first
    candidates: dict[str, object]  # candidate name -> catalog Target
    cooldown_s: float = 30.0
    cooling: dict[str, float] = field(default_factory=dict)  # target model id -> until (monotonic)

    def card(self) -> ModelCard:
        return ModelCard(self.model_id, candidates=sorted(t.model_id for t in self.candidates.values()))

    def engines(self) -> frozenset[str]:
        return frozenset().union(*(t.engines() for t in self.candidates.values()))

    def chat(self, req) -> AsyncIterator:
        return self._route(req, "chat")

    def complete(self, req) -> AsyncIterator:
        return self._route(req, "complete")

    def order(self, ranked: list[str]) -> list[object]:
        """Candidate Targets to try, best first: ranked ones, then any the policy left out;
        those cooling down go last (still tried if everything else fails)."""
        names = [n for n in ranked if n in self.candidates]
        names += [n for n in self.candidates if n not in names]
        now = time.monotonic()
        ready = [n for n in names if self.cooling.get(self.candidates[n].model_id, 0.0) <= now]
        cold = [n for n in names if n not in ready]
        return [self.candidates[n] for n in ready + cold]

    async def _route(self, req, kind: str):
        errors, unsupported = [], None
        # a trained policy embeds the prompt (~10 ms of CPU): off the event loop
        ranked = await asyncio.to_thread(self.rank, prompt_text(req))
        for target in self.order(ranked):
            sub = req.model_copy(update={"model": target.model_id})
            async with aclosing(getattr(target, kind)(sub)) as stream:
                try:
                    first = await anext(stream)
                except StopAsyncIteration:
                    errors.append(f"{target.model_id}: no answer")
                    self._cool(target.model_id)
                    continue
                except UnsupportedError as exc:  # not this candidate's kind of request: the next one
                    unsupported = unsupported or exc
                    continue
                except APIError as exc:
                    if exc.status < 500:
                        raise
                    errors.append(f"{target.model_id}: {exc.message}")
                    self._cool(target.model_id)
                    continue
                yield first
                async for chunk in stream:
                    yield chunk
                return
        if unsupported is not None and not errors:
            raise unsupported
        raise UnavailableError(f"{self.model_id}: every candidate failed ({'; '.join(errors)})")

    def _cool(self, model_id: str) -> None:
        log.warning("%s: %s failed, cooling down for %.0f s", self.model_id, model_id, self.cooldown_s)
        self.cooling[model_id] = time.monotonic() + self.cooldown_s


def fixed_order(order: list[str]) -> Callable[[str], list[str]]:
    """A policy that always prefers the same order (a plain fallback chain)."""
    return lambda _prompt: list(order)
