"""A request's worst-case cost, reserved against a key's budget before it is admitted.

Contract: `worst_case` never under-counts a request to a single model (local, adapter,
upstream, router or pool):
- prompt tokens: the UTF-8 bytes of what the request sends (messages and tools as JSON, or
  the prompt), which no byte-level tokenizer exceeds (a template adds fewer tokens than the
  JSON's own punctuation); token-id prompts count their ids;
- completion tokens: `max_completion_tokens` / `max_tokens`, else the model's context
  length, else `default_max_tokens` (an upstream's own limit is unknown), times `n` and the
  number of prompts;
- the price: the served model's; a router's or pool's, the dearest it may pick.
A compound program (or tool agent) may call any model any number of times within its own
budget, so its estimate is `COMPOSITE_CALLS` calls at the fleet's dearest price; the gate
caps it at what is left of the key's budget and ends the stream in-band if it passes that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fleetlm.openai.chunks import Pricing

COMPOSITE_CALLS = 8  # calls a program's reservation assumes (capped by the key's remaining budget)


@dataclass
class Estimate:
    prompt_tokens: int
    completion_tokens: int
    pricing: Pricing
    composite: bool  # a program or agent: the estimate is a guess, capped by the key's budget

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def usd(self) -> float:
        one = self.pricing.cost(self.prompt_tokens, self.completion_tokens)
        return one * COMPOSITE_CALLS if self.composite else one


def worst_case(req, target, catalog, *, default_max_tokens: int) -> Estimate:
    card = target.card()
    pricing, composite = _pricing(card, catalog, set())
    return Estimate(prompt_bound(req), completion_bound(req, card.max_model_len, default_max_tokens), pricing,
                    composite)


def prompt_bound(req) -> int:
    messages = getattr(req, "messages", None)
    if messages is not None:
        sent = req.model_dump(mode="json", include={"messages", "tools"}, exclude_none=True)
        return len(json.dumps(sent, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    prompt = req.prompt
    prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
    return sum(len(p) if isinstance(p, list) else len(p.encode("utf-8", "surrogatepass")) for p in prompts)


def completion_bound(req, max_model_len: int | None, default_max_tokens: int) -> int:
    asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
    chat = getattr(req, "messages", None) is not None
    if asked is None:
        asked = (max_model_len or default_max_tokens) if chat else 16  # OpenAI's completions default
    prompts = 1
    if not chat and isinstance(req.prompt, list) and req.prompt and not isinstance(req.prompt[0], int):
        prompts = len(req.prompt)
    return asked * (req.n or 1) * prompts


def _pricing(card, catalog, seen: set[str]) -> tuple[Pricing, bool]:
    """The price a request to `card` may be charged at, and whether it is composite."""
    if card.pricing is not None:
        return card.pricing, False
    picks = card.candidates or (list(card.pools.values()) if card.pools else None)
    if picks:
        prices = [_pricing(catalog.resolve(m).card(), catalog, seen | {card.id})[0]
                  for m in picks if m not in seen]
        composite = any(_pricing(catalog.resolve(m).card(), catalog, seen | {card.id})[1]
                        for m in picks if m not in seen)
        return _dearest(prices), composite
    return _dearest([c.pricing for c in catalog.cards() if c.pricing is not None]), True


def _dearest(prices: list[Pricing]) -> Pricing:
    return Pricing(max((p.input_per_mtok for p in prices), default=0.0),
                   max((p.output_per_mtok for p in prices), default=0.0))
