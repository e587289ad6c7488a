"""Model ids -> Targets. A Target answers chat and completions for one public model id:
the local engine (`gemma-3-270m`, a folder's name), or an upstream OpenAI-compatible server
(`upstream/<name>/<model>`). Routers and compound programs will be Targets too, so the HTTP
layer never needs to know which kind it holds.

A Target has `model_id`, `card(created) -> dict` (its /v1/models entry), and
`async chat(req, raw)` / `async complete(req, raw)` returning the HTTP response."""

from __future__ import annotations

from typing import Protocol

from fleetlm.openai.errors import APIError


class Target(Protocol):
    model_id: str

    def card(self, created: int) -> dict: ...

    async def chat(self, req, raw): ...

    async def complete(self, req, raw): ...


class Catalog:
    """Fixed Targets by id, plus `sources` that make Targets on demand (LoRA adapters:
    `<base>:<adapter>`), each with `resolve(model) -> Target | None` and `cards(created)`."""

    def __init__(self, targets: list[Target], sources=()):
        self.sources = list(sources)
        self.targets: dict[str, Target] = {}
        for t in targets:
            if t.model_id in self.targets:
                raise ValueError(f"model id {t.model_id!r} is defined twice")
            self.targets[t.model_id] = t

    def resolve(self, model: str) -> Target:
        target = self.targets.get(model)
        for source in self.sources:
            if target is not None:
                break
            target = source.resolve(model)
        if target is None:
            raise APIError(404, f"The model {model!r} does not exist; see GET /v1/models", param="model",
                           code="model_not_found")
        return target

    def cards(self, created: int) -> list[dict]:
        return [t.card(created) for t in self.targets.values()] + [
            card for source in self.sources for card in source.cards(created)]
