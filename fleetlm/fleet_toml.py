"""fleet.toml: the file that describes a fleet, read into the config dataclasses of
`fleetlm.config` (one table type per dataclass; unknown tables and keys are errors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fleetlm.config import (
    Device,
    PoolConfig,
    ProgramConfig,
    RouterConfig,
    TenantsConfig,
    ToolAgentConfig,
    UpstreamConfig,
    is_postgres_url,
)
from fleetlm.deploy_config import ModelConfig, RayConfig


@dataclass
class FleetFile:
    """A fleet.toml, every table validated into its dataclass."""

    upstreams: list[UpstreamConfig] = field(default_factory=list)
    routers: list[RouterConfig] = field(default_factory=list)
    pools: list[PoolConfig] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)  # for `fleet plan` / `fleet hardware`
    tool_agents: list[ToolAgentConfig] = field(default_factory=list)
    programs: list[ProgramConfig] = field(default_factory=list)
    tenants: TenantsConfig | None = None  # `[tenants]`: keys, budgets, ledger, batches
    models: list[ModelConfig] = field(default_factory=list)  # `[[model]]`: local base models, one engine each
    ray: RayConfig | None = None  # `[ray]`: how the fleet runs on Ray Serve (`fleet serve --ray`)


# fleet.toml table -> (its dataclass, FleetFile field, the key that must be unique)
TABLES = {"upstream": (UpstreamConfig, "upstreams", "name"), "router": (RouterConfig, "routers", "name"),
          "pool": (PoolConfig, "pools", "model"), "device": (Device, "devices", "name"),
          "tool_agent": (ToolAgentConfig, "tool_agents", "name"), "program": (ProgramConfig, "programs", "name"),
          "model": (ModelConfig, "models", "id")}
# fleet.toml single tables -> (their dataclass, FleetFile field)
SINGLE = {"tenants": (TenantsConfig, "tenants"), "ray": (RayConfig, "ray")}


def load_fleet_toml(path: str) -> FleetFile:
    """Read a fleet.toml (`[[upstream]]`, `[[router]]`, `[[pool]]`, `[[device]]`,
    `[[tool_agent]]`, `[[program]]` and `[[model]]` tables, one `[tenants]` and one `[ray]`)
    into typed configs; unknown tables or keys are errors. Relative file paths in it (a
    router's `path`, a tool agent's `sqlite` and `docs`, the tenants' database, a model's
    folder and adapters) are read relative to the file's folder."""
    import tomllib

    with open(path, "rb") as f:
        data = tomllib.load(f)
    unknown = sorted(set(data) - set(TABLES) - set(SINGLE))
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {', '.join(unknown)}; known: {', '.join([*TABLES, *SINGLE])}")
    fleet = FleetFile()
    for table, (cls, attr) in SINGLE.items():
        if table in data:
            if not isinstance(data[table], dict):
                raise ValueError(f"{path}: [{table}] is one table, not a list")
            setattr(fleet, attr, cls.from_dict(dict(data[table]), label=table))
    for table, (cls, attr, key) in TABLES.items():
        items = [cls.from_dict(dict(values), label=table) for values in data.get(table, [])]
        keys = [getattr(item, key) for item in items]
        if len(keys) != len(set(keys)):
            raise ValueError(f"{path}: {table} {key}s must be unique")
        setattr(fleet, attr, items)
    if sum(r.default for r in fleet.routers) > 1:
        raise ValueError(f"{path}: at most one router can be the default (router/auto)")
    here = Path(path).resolve().parent  # relative paths in the file are relative to the file
    for r in fleet.routers:
        r.path = _beside(here, r.path)
    for a in fleet.tool_agents:
        a.sqlite, a.docs = _beside(here, a.sqlite), _beside(here, a.docs)
    for m in fleet.models:  # a folder beside the file; else an embedded id (or a path from the cwd)
        m.engine.model = _beside(here, m.engine.model) if (here / m.engine.model).is_dir() else m.engine.model
        m.adapters_dir = _beside(here, m.adapters_dir)
    if fleet.tenants is not None:
        t = fleet.tenants
        t.database = t.database if is_postgres_url(t.database) else _beside(here, t.database)
        t.files_dir = _beside(here, t.files_dir)
    return fleet


def _beside(folder: Path, path: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else folder / p)
