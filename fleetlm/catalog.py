"""Model ids -> Targets, and `build`, which assembles the whole fleet from its configuration.

A Target serves one public model id: the local engine (`gemma-3-270m`) and its adapters
(`gemma-3-270m:<adapter>`), an upstream server's model (`upstream/<name>/<model>`), a router
(`router/<name>`), a pool, or a compound program (`compound/<name>`). Every kind has the same
small interface (`Target`), so a router can pick a program, a program can call a router, and
the HTTP layer never knows which kind it holds. Targets yield data, never HTTP responses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from fleetlm.config import RouterConfig, ServerConfig
from fleetlm.fleet_toml import FleetFile
from fleetlm.openai.chunks import ChatChunk, CompletionChunk, ModelCard, Pricing
from fleetlm.openai.errors import NotFoundError
from fleetlm.openai.protocol import ChatCompletionRequest, CompletionRequest


class Target(Protocol):
    model_id: str

    def card(self) -> ModelCard:
        """Its `/v1/models` entry."""

    def engines(self) -> frozenset[str]:
        """Model ids of the local engines a request may reach through it (admission control)."""

    def chat(self, req: ChatCompletionRequest) -> AsyncIterator[ChatChunk]:
        """Chunks of the answer (see fleetlm.openai.chunks); errors are raised as APIErrors,
        before the first chunk whenever the request is at fault. Nothing runs until iterated;
        closing the iterator early aborts everything the request started."""

    def complete(self, req: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        """As `chat`, for text completions."""


class Catalog:
    """Fixed Targets by id, plus `sources` that make Targets on demand (LoRA adapters:
    `<base>:<adapter>`), each with `resolve(model) -> Target | None` and `cards()`. Reads as
    a mapping too (`model in catalog`, `catalog[model]`), so builders can look ids up in it."""

    def __init__(self, targets: list[Target], sources=()):
        self.sources = list(sources)
        self.targets: dict[str, Target] = {}
        self.add(targets)

    def add(self, targets: list[Target]) -> None:
        for t in targets:
            if t.model_id in self.targets:
                raise ValueError(f"model id {t.model_id!r} is defined twice")
            self.targets[t.model_id] = t

    def __contains__(self, model: str) -> bool:
        try:
            self.resolve(model)
            return True
        except NotFoundError:
            return False

    def __getitem__(self, model: str) -> Target:
        try:
            return self.resolve(model)
        except NotFoundError:
            raise KeyError(model) from None

    def resolve(self, model: str) -> Target:
        target = self.targets.get(model)
        for source in self.sources:
            if target is not None:
                break
            target = source.resolve(model)
        if target is None:
            raise NotFoundError(f"The model {model!r} does not exist; see GET /v1/models")
        return target

    def cards(self) -> list[ModelCard]:
        return [t.card() for t in self.targets.values()] + [c for s in self.sources for c in s.cards()]


@dataclass
class Base:
    """One base model of the fleet and what serves it: a local engine, or a remote one (Ray)."""

    target: Target  # serves the base model's id
    source: object = None  # makes its `<id>:<adapter>` Targets (resolve, cards); None: no adapters
    llm: object = None  # its local AsyncLLM (metrics, health, closed at shutdown); None when remote
    registry: object = None  # backends.adapters.AdapterRegistry taking runtime adapter loads, if any
    start: object = None  # async () -> None run when the server starts (a remote model fetching its card)


@dataclass
class Fleet:
    """What `build` assembles: the catalog, and what the server runs and must close."""

    catalog: Catalog
    engines: dict = field(default_factory=dict)  # model id -> AsyncLLM (the local engines)
    adapters: dict = field(default_factory=dict)  # base model id -> AdapterRegistry (local engines with LoRA)
    clients: list = field(default_factory=list)  # httpx.AsyncClients of the upstreams
    # async () -> list[str]: what is wrong with the remote base models (empty: all served)
    checks: list = field(default_factory=list)
    starters: list = field(default_factory=list)  # async () -> None, run when the server starts

    async def problems(self) -> list[str]:
        """Why some base model cannot be served now (a stopped engine, no live replica)."""
        out = [f"{m}: {s.error}" for m, s in ((m, llm.stats()) for m, llm in self.engines.items()) if s.error]
        for check in self.checks:
            out += await check()
        return out

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
        for llm in self.engines.values():
            llm.shutdown()  # aborts whatever is still running, frees the engine thread


def local_base(model_id: str, llm, *, server: ServerConfig, adapters_dir: str | None = None,
               pricing: Pricing | None = None) -> Base:
    """A local engine (an AsyncLLM) served as `model_id`; with LoRA on, its adapters from
    `adapters_dir` and runtime loads as `<model_id>:<adapter>`."""
    from fleetlm.backends.local import AdapterSource, LocalTarget
    from fleetlm.backends.local_inputs import EngineInputs

    local = LocalTarget(model_id, llm, EngineInputs(llm.engine, max_tools=server.max_tools,
                                                    prepare_timeout_s=server.prepare_timeout_s), pricing=pricing)
    if llm.engine.lora_pool is None:
        if adapters_dir:
            raise ValueError(f"{model_id}: adapters_dir needs an engine started with LoRA support (enable_lora)")
        return Base(local, llm=llm)
    from fleetlm.backends.adapters import AdapterRegistry

    registry = AdapterRegistry(llm.engine.lora_pool, adapters_dir=adapters_dir, rescan_s=server.adapter_rescan_s)
    return Base(local, AdapterSource(local, registry), llm=llm, registry=registry)


def build(bases: list[Base], *, server: ServerConfig, fleet: FleetFile | None = None, embedder=None,
          checks=()) -> Fleet:
    """The fleet around its base models (`bases`, the first one the programs' default): their
    adapters, the upstreams of `fleet` (a fleet.toml), the compound programs (built-ins,
    `server.programs_dir`, installed packages, `[[program]]` tables), then its routers, pools
    and tool agents, each over any model id built before it (adapters and programs included).
    Invalid references are ValueErrors naming the table. `checks`: async () -> list[str], what
    is wrong with remote base models (see `Fleet.problems`)."""
    import httpx

    from fleetlm.backends.upstream import upstream_targets

    fleet = fleet or FleetFile()
    out = Fleet(Catalog([b.target for b in bases], [b.source for b in bases if b.source is not None]),
                engines={b.target.model_id: b.llm for b in bases if b.llm is not None},
                adapters={b.target.model_id: b.registry for b in bases if b.registry is not None},
                checks=list(checks), starters=[b.start for b in bases if b.start is not None])
    catalog = out.catalog
    for up in fleet.upstreams:
        client = httpx.AsyncClient(timeout=httpx.Timeout(up.timeout_s, connect=up.connect_timeout_s))
        out.clients.append(client)
        catalog.add(upstream_targets(up, client))
    from fleetlm.compound.programs.loader import build_programs

    # programs resolve model ids when they call them, so they come first: routers, pools and
    # agents below may pick a program, and a program may call any of those
    catalog.add(build_programs(fleet.programs, programs_dir=server.programs_dir, resolve=catalog.resolve,
                               default_model=bases[0].target.model_id,
                               engines=frozenset().union(*(b.target.engines() for b in bases))))
    catalog.add(build_routers(fleet.routers, catalog))
    if fleet.pools:
        from fleetlm.backends.pools import build_pools

        catalog.add(build_pools(fleet.pools, catalog))
    if fleet.tool_agents:  # a planner or joiner may be a router or a pool
        from fleetlm.compound.programs.tool_agent import build_tool_agent

        catalog.add([build_tool_agent(cfg, catalog, embedder=embedder) for cfg in fleet.tool_agents])
    return out


def build_routers(configs: list[RouterConfig], by_id) -> list[Target]:
    """RouterTargets (plus router/auto and compound/auto for the default one) over already-built Targets
    (`by_id`: model id -> Target, e.g. the Catalog itself, adapters included)."""
    from fleetlm.backends.router import RouterTarget, fixed_order

    out = []
    for cfg in configs:
        missing = sorted(m for m in set(cfg.candidates.values()) if m not in by_id)
        if missing:
            raise ValueError(f"router {cfg.name}: unknown candidate model ids {missing}")
        if cfg.path is not None:
            from fleetlm.compound.router.router import Router

            router = Router.load(cfg.path)
            if cfg.lam is not None:
                router.lam = cfg.lam
            unknown = sorted(set(cfg.candidates) - set(router.models))
            if unknown:
                raise ValueError(f"router {cfg.name}: candidates {unknown} are not models of {cfg.path} "
                                 f"({', '.join(router.models)})")
            router.rank("warm-up")  # loads the embedding model now, not on the first request
            rank = router.rank
        else:
            rank = fixed_order(cfg.order)
        candidates = {name: by_id[mid] for name, mid in cfg.candidates.items()}
        aliases = [a for a in ("router/auto", "compound/auto") if a not in by_id] if cfg.default else []
        for rid in [f"router/{cfg.name}"] + aliases:  # a program named `auto` keeps compound/auto
            out.append(RouterTarget(rid, rank, candidates, cooldown_s=cfg.cooldown_s))
    return out
