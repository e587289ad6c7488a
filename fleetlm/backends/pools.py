"""One model id backed by several pools, each request routed by its access pattern.

Contract: a `PoolTarget` serves `PoolConfig.model`. It estimates the request's prompt length
(characters of every message, or of the prompt, divided by `chars_per_token`; token-id
prompts are counted exactly) without a tokenizer, since pools may run different ones and
the bucket edges are coarse; finds its bucket (`prompt_edges`, as `fleet plan` buckets a
trace) and sends it to that bucket's pools in order, then to every other pool: routing,
fallback and cooldown are `RouterTarget`'s, one per bucket, all sharing one cooldown table
so a pool that fails is skipped for every bucket.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from fleetlm.backends.router import RouterTarget, fixed_order
from fleetlm.config import PoolConfig
from fleetlm.openai.chunks import ModelCard


def estimate_prompt_tokens(req, chars_per_token: float = 4.0) -> int:
    """Prompt tokens of a chat or completion request, estimated (see the module docstring)."""
    if hasattr(req, "messages"):
        return int(sum(len(m.text() or "") for m in req.messages) / chars_per_token)
    p = req.prompt
    if isinstance(p, str):
        return int(len(p) / chars_per_token)
    if p and isinstance(p[0], int):
        return len(p)
    if p and isinstance(p[0], str):
        return int(max(len(x) for x in p) / chars_per_token)
    return max((len(x) for x in p), default=0)  # lists of token ids


def bucket_index(tokens: int, edges: list[int]) -> int:
    return bisect.bisect_right(edges, tokens)


@dataclass
class PoolTarget:
    model_id: str
    edges: list[int]
    routers: list[RouterTarget]  # one per bucket
    chars_per_token: float = 4.0
    members: dict[str, object] = field(default_factory=dict)

    def card(self) -> ModelCard:
        return ModelCard(self.model_id, pools={name: t.model_id for name, t in self.members.items()},
                         prompt_edges=self.edges)

    def engines(self) -> frozenset[str]:
        return frozenset().union(*(t.engines() for t in self.members.values()))

    def router_for(self, req) -> RouterTarget:
        return self.routers[bucket_index(estimate_prompt_tokens(req, self.chars_per_token), self.edges)]

    def chat(self, req):
        return self.router_for(req).chat(req)

    def complete(self, req):
        return self.router_for(req).complete(req)


def build_pools(configs: list[PoolConfig], by_id: dict) -> list[PoolTarget]:
    """PoolTargets over already-built catalog Targets (`by_id`: model id -> Target)."""
    out = []
    for cfg in configs:
        missing = sorted(m for m in set(cfg.members.values()) if m not in by_id)
        if missing:
            raise ValueError(f"pool {cfg.model}: unknown member model ids {missing}")
        if cfg.model in by_id:
            raise ValueError(f"pool {cfg.model}: that model id is already served")
        members = {name: by_id[mid] for name, mid in cfg.members.items()}
        cooling: dict[str, float] = {}
        routers = [RouterTarget(cfg.model, fixed_order(order), members, cooldown_s=cfg.cooldown_s, cooling=cooling)
                   for order in cfg.buckets]
        out.append(PoolTarget(cfg.model, list(cfg.prompt_edges), routers, cfg.chars_per_token, members))
    return out
