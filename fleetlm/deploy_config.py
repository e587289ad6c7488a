"""Config dataclasses for where models run: `[[model]]` tables (local base models, one engine
each) and the `[ray]` table (the fleet on Ray Serve). Same rules as `fleetlm.config`: validated,
unknown keys are errors naming the key. Imports nothing of fleetlm but `fleetlm.config`."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from fleetlm.config import ConfigKeyError, EngineConfig, FromDict

MODEL_ID = re.compile(r"[A-Za-z0-9][\w.\-]*")  # no ':' (adapters are <id>:<name>) and no '/' (namespaces)


@dataclass(kw_only=True)
class ModelConfig:
    """`[[model]]`: one local base model with its own engine, served as `id` and its adapters
    as `id:<adapter>`. The table takes every EngineConfig key (model, dtype,
    kv_cache_memory_gb, max_num_seqs, ...) beside the serving keys below."""

    id: str  # the public model id
    engine: EngineConfig  # built from the table's engine keys
    adapters_dir: str | None = None  # PEFT adapters, one sub-folder each (turns LoRA on)
    price_input_per_mtok: float = 0.0  # $ per million prompt tokens
    price_output_per_mtok: float = 0.0  # $ per million completion tokens

    @classmethod
    def from_dict(cls, values: dict, *, label: str = "model") -> ModelConfig:
        """From a flat table: serving keys here, every other key an EngineConfig field (a key
        of neither is an error naming it; `model` is required, the embedded id included)."""
        own = {f.name for f in dataclasses.fields(cls)} - {"engine"}
        engine_keys = {f.name for f in dataclasses.fields(EngineConfig)}
        mid = values.get("id", "?")
        unknown = sorted(set(values) - own - engine_keys)
        if unknown:
            raise ConfigKeyError(f"Unknown {label} {mid} key(s): {', '.join(unknown)}; known: "
                                 f"{', '.join(sorted(own | engine_keys))}", unknown)
        missing = [k for k in ("id", "model") if k not in values]
        if missing:
            raise ConfigKeyError(f"{label} {mid}: missing keys {missing}", missing)
        if not isinstance(values["id"], str) or not MODEL_ID.fullmatch(values["id"]):
            raise ValueError(f"{label} id {values['id']!r}: letters, digits, '_', '.', '-' only (no ':' or '/')")
        engine = {k: v for k, v in values.items() if k in engine_keys}
        if values.get("adapters_dir"):
            engine["enable_lora"] = True
        try:
            return cls(engine=EngineConfig(**engine), **{k: v for k, v in values.items() if k in own})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{label} {mid}: {exc}") from None


@dataclass(kw_only=True)
class RayDeploymentConfig(FromDict):
    """`[[ray.deployment]]`: how one Ray Serve deployment runs: `name` is "gateway" (the HTTP
    app) or a local base model's id (its engine). Fixed `num_replicas`, or autoscaling
    between `min_replicas` and `max_replicas` on `target_ongoing_requests` per replica."""

    name: str
    num_replicas: int | None = None  # fixed count; default 1 when no autoscaling bounds are given
    min_replicas: int | None = None  # autoscaling lower bound (0 is not allowed: a cold start per idle)
    max_replicas: int | None = None  # autoscaling upper bound
    target_ongoing_requests: float = 8.0  # requests in flight per replica the autoscaler aims at
    upscale_delay_s: float = 5.0  # load above target this long adds replicas
    downscale_delay_s: float = 60.0  # load below target this long removes replicas
    # requests one replica takes at once (Ray queues the rest); None: an engine's max_num_seqs,
    # the gateway 1000 (it only forwards)
    max_ongoing_requests: int | None = None
    num_cpus: float | None = None  # per replica; None: 1 for an engine, 0.1 for the gateway
    num_gpus: float = 0.0  # per replica

    def __post_init__(self):
        autoscaled = self.min_replicas is not None or self.max_replicas is not None
        if self.num_replicas is not None and autoscaled:
            raise ValueError(f"ray deployment {self.name}: give num_replicas or min_replicas/max_replicas, not both")
        if autoscaled and (self.min_replicas is None or self.max_replicas is None):
            raise ValueError(f"ray deployment {self.name}: autoscaling needs both min_replicas and max_replicas")
        if autoscaled and not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"ray deployment {self.name}: need 1 <= min_replicas <= max_replicas")
        if self.num_replicas is not None and self.num_replicas < 1:
            raise ValueError(f"ray deployment {self.name}: num_replicas must be >= 1")
        if self.target_ongoing_requests <= 0 or self.upscale_delay_s < 0 or self.downscale_delay_s < 0:
            raise ValueError(f"ray deployment {self.name}: target_ongoing_requests must be > 0, delays >= 0")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise ValueError(f"ray deployment {self.name}: max_ongoing_requests must be >= 1")
        if (self.num_cpus is not None and self.num_cpus < 0) or self.num_gpus < 0:
            raise ValueError(f"ray deployment {self.name}: num_cpus and num_gpus must be >= 0")

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None


@dataclass(kw_only=True)
class RayConfig(FromDict):
    """`[ray]`: serve the fleet on Ray Serve (`fleet serve --ray`)."""

    address: str | None = None  # an existing cluster ("auto", "ray://host:10001"); None: start a local one
    app_name: str = "fleetlm"  # the Serve application's name
    deployment: list[RayDeploymentConfig] = field(default_factory=list)  # dicts are converted (and checked)

    def __post_init__(self):
        self.deployment = [d if isinstance(d, RayDeploymentConfig) else
                           RayDeploymentConfig.from_dict(dict(d), label=f"ray deployment {d.get('name', '?')}")
                           for d in self.deployment]
        names = [d.name for d in self.deployment]
        if len(names) != len(set(names)):
            raise ValueError("ray deployment names must be unique")

    def for_name(self, name: str) -> RayDeploymentConfig:
        """The settings of deployment `name` (the defaults when it has no table)."""
        return next((d for d in self.deployment if d.name == name), RayDeploymentConfig(name=name))
