"""`router/<name>`: a Target that picks, per request, which catalog Target serves it.

Contract: `rank(prompt) -> [candidate name, ...]` (best first) comes from a routing policy
(a trained router from `fleetlm.compound.router`, or a fixed preference order). The router
tries the candidates in that order, skipping those cooling down; a candidate that fails
before answering (unreachable, timeout, a 5xx, or a stream that cannot start) is cooled
down for `cooldown_s` (as LiteLLM does) and the next one is tried, so no request is lost
while any candidate is up. Client errors (4xx) are returned as they are: another model
would reject them too. The response names the model that served, in its `model` field and
in the `x-fleetlm-served-by` header.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetlm.openai.errors import APIError

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
    on_served: Callable[[str, str], None] | None = None  # (router id, served model id)
    cooling: dict[str, float] = field(default_factory=dict)  # target model id -> until (monotonic)

    def card(self, created: int) -> dict:
        return {"id": self.model_id, "object": "model", "created": created, "owned_by": "fleetlm",
                "candidates": sorted(t.model_id for t in self.candidates.values())}

    async def chat(self, req, raw):
        return await self._route(req, raw, "chat")

    async def complete(self, req, raw):
        return await self._route(req, raw, "complete")

    def order(self, ranked: list[str]) -> list[object]:
        """Candidate Targets to try, best first: ranked ones, then any the policy left out;
        those cooling down go last (still tried if everything else fails)."""
        names = [n for n in ranked if n in self.candidates]
        names += [n for n in self.candidates if n not in names]
        now = time.monotonic()
        ready = [n for n in names if self.cooling.get(self.candidates[n].model_id, 0.0) <= now]
        cold = [n for n in names if n not in ready]
        return [self.candidates[n] for n in ready + cold]

    async def _route(self, req, raw, kind: str):
        errors = []
        # a trained policy embeds the prompt (~10 ms of CPU): off the event loop
        ranked = await asyncio.to_thread(self.rank, prompt_text(req))
        for target in self.order(ranked):
            sub = req.model_copy(update={"model": target.model_id})
            try:
                resp = await getattr(target, kind)(sub, raw)
            except APIError as exc:
                if exc.status < 500:
                    raise
                errors.append(f"{target.model_id}: {exc.message}")
                self._cool(target.model_id)
                continue
            if resp.status_code >= 500:
                errors.append(f"{target.model_id}: HTTP {resp.status_code}")
                self._cool(target.model_id)
                continue
            resp.headers["x-fleetlm-served-by"] = target.model_id
            if self.on_served is not None:
                self.on_served(self.model_id, target.model_id)
            return resp
        raise APIError(502, f"{self.model_id}: every candidate failed ({'; '.join(errors)})", code="upstream_error")

    def _cool(self, model_id: str) -> None:
        log.warning("%s: %s failed, cooling down for %.0f s", self.model_id, model_id, self.cooldown_s)
        self.cooling[model_id] = time.monotonic() + self.cooldown_s


def fixed_order(order: list[str]) -> Callable[[str], list[str]]:
    """A policy that always prefers the same order (a plain fallback chain)."""
    return lambda _prompt: list(order)
