"""One validated dataclass per component. Unknown keys are errors, never ignored."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def _from_dict(cls, values: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


@dataclass(kw_only=True)
class EngineConfig:
    model: str = "gemma-3-270m"  # embedded default id, or a local Hugging Face-format folder
    dtype: str = "auto"  # auto: bf16 on CUDA or a CPU with AVX-512 BF16 / AMX, else fp32
    device: str = "auto"  # auto: cuda if available, else cpu
    max_model_len: int | None = None  # tokens per sequence; default min(model limit, 8192)
    block_size: int = 16  # tokens per KV-cache block
    kv_cache_memory_gb: float = 1.0  # KV-cache size when num_kv_blocks is not given (gemma-3-270m: 18 KiB/token)
    num_kv_blocks: int | None = None  # exact number of KV blocks (tests use it to force preemption)
    max_num_seqs: int = 64  # sequences running at once
    max_num_batched_tokens: int = 512  # token budget per step (prompt chunks + decodes)
    enable_prefix_caching: bool = True
    seed: int = 0  # RNG seed for requests without their own seed
    cache_dir: str | None = None  # where the embedded model is unpacked; default ~/.cache/fleetlm
    num_threads: int | None = None  # torch intra-op threads on CPU; None keeps torch's default
    # Decode attention: "auto" uses the native CPU kernel on CPU when it builds (compiled once,
    # cached), else PyTorch SDPA over gathered blocks; "torch" forces the latter.
    attention_backend: str = "auto"
    # Linux/glibc, CPU: keep large freed buffers in the heap instead of returning them to the
    # OS, so each step's 30+ MB logits buffer is not page-faulted in again (a process-wide
    # malloc setting; measured: LM head 35 -> 28 ms, logits widening 25 -> 14 ms).
    tune_malloc: bool = True
    # Multi-LoRA: adapters (PEFT folders) served in the same batch as the base model.
    enable_lora: bool = False
    max_loras: int = 8  # adapters resident at once (slots); others load from disk on demand, LRU
    max_lora_rank: int = 64  # larger adapters are refused with a clear error

    def __post_init__(self):
        positive = ["block_size", "max_num_seqs", "max_num_batched_tokens"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ["max_model_len", "num_kv_blocks", "num_threads"]:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1 or None, got {value}")
        if self.attention_backend not in ("auto", "torch", "cpu_kernel"):
            raise ValueError(f"EngineConfig.attention_backend must be auto, torch or cpu_kernel, "
                             f"got {self.attention_backend!r}")
        if self.kv_cache_memory_gb <= 0:
            raise ValueError("EngineConfig.kv_cache_memory_gb must be > 0")
        if self.max_loras < 1 or self.max_lora_rank < 1:
            raise ValueError("EngineConfig.max_loras and max_lora_rank must be >= 1")

    @classmethod
    def from_dict(cls, values: dict) -> "EngineConfig":
        return _from_dict(cls, values)


@dataclass(kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback by default; pass 0.0.0.0 deliberately to expose it
    port: int = 8000
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer <key>`
    served_model_name: str | None = None  # model id clients use; default: the engine's model id
    max_pending_requests: int = 256  # generation requests in flight; beyond it: 429 + Retry-After
    max_body_bytes: int = 8 * 2**20  # larger request bodies get 413
    enable_embeddings: bool = True  # serve all-MiniLM-L6-v2 on /v1/embeddings
    shutdown_timeout_s: float = 30.0  # graceful shutdown: in-flight requests get this long
    # LoRA adapters (engine started with enable_lora): each sub-folder is served as
    # `<model id>:<folder name>`; the folder is rescanned at most every adapter_rescan_s.
    adapters_dir: str | None = None
    adapter_rescan_s: float = 2.0
    # Tool budget: requests with more tools keep the most relevant max_tools (None: all).
    max_tools: int | None = None

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ValueError(f"ServerConfig.port must be in 1..65535, got {self.port}")
        if self.max_pending_requests < 1 or self.max_body_bytes < 1024:
            raise ValueError("ServerConfig.max_pending_requests must be >= 1 and max_body_bytes >= 1024")

    @classmethod
    def from_dict(cls, values: dict) -> "ServerConfig":
        return _from_dict(cls, values)


@dataclass(kw_only=True)
class UpstreamConfig:
    """An OpenAI-compatible server whose models are served as `upstream/<name>/<model>`."""

    name: str
    base_url: str  # e.g. http://127.0.0.1:8001/v1
    models: list[str]
    api_key_env: str | None = None  # environment variable holding its API key (never the key itself)
    price_input_per_mtok: float = 0.0  # $ per million prompt tokens
    price_output_per_mtok: float = 0.0  # $ per million completion tokens
    timeout_s: float = 120.0  # whole request (a stream: between chunks)
    connect_timeout_s: float = 5.0

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"upstream name must be non-empty without '/', got {self.name!r}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"upstream {self.name}: base_url must start with http:// or https://")
        if not self.models:
            raise ValueError(f"upstream {self.name}: list at least one model")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError(f"upstream {self.name}: timeouts must be > 0")

    @classmethod
    def from_dict(cls, values: dict) -> "UpstreamConfig":
        return _from_dict(cls, values)


@dataclass(kw_only=True)
class RouterConfig:
    """A router served as `router/<name>` (and `router/auto` when `default`)."""

    name: str
    # candidate name (as the routing policy knows it) -> catalog model id that serves it
    candidates: dict[str, str]
    path: str | None = None  # a trained router folder (fleet router train --out ...)
    order: list[str] | None = None  # without `path`: a fixed preference order (fallback chain)
    lam: float | None = None  # quality - lam * cost trade-off; None keeps the trained router's
    cooldown_s: float = 30.0  # a failing candidate is skipped this long
    default: bool = False  # also serve it as router/auto

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name == "auto":
            raise ValueError(f"router name must be non-empty, without '/', not 'auto': {self.name!r}")
        if not self.candidates:
            raise ValueError(f"router {self.name}: list its candidates")
        if (self.path is None) == (self.order is None):
            raise ValueError(f"router {self.name}: give exactly one of path (trained) or order (fixed)")
        if self.order is not None and set(self.order) - set(self.candidates):
            raise ValueError(f"router {self.name}: order names unknown candidates "
                             f"{sorted(set(self.order) - set(self.candidates))}")

    @classmethod
    def from_dict(cls, values: dict) -> "RouterConfig":
        return _from_dict(cls, values)


@dataclass(kw_only=True)
class PoolConfig:
    """One model id backed by several pools (e.g. upstreams on different hardware); each
    request goes to the pools its prompt-length bucket prefers (`fleet plan` says which),
    then to any other pool if those fail."""

    model: str  # the model id clients use
    members: dict[str, str]  # pool name -> catalog model id serving it
    prompt_edges: list[int]  # bucket i holds prompts with edges[i-1] <= tokens < edges[i]
    buckets: list[list[str]]  # per bucket (len(prompt_edges) + 1): pool names, preferred first
    chars_per_token: float = 4.0  # prompt tokens are estimated as characters / this
    cooldown_s: float = 30.0  # a failing pool is skipped this long

    def __post_init__(self):
        if not self.model or not self.members:
            raise ValueError("pool: give model and members")
        if list(self.prompt_edges) != sorted(set(self.prompt_edges)) or any(e < 1 for e in self.prompt_edges):
            raise ValueError(f"pool {self.model}: prompt_edges must be increasing positive integers")
        if len(self.buckets) != len(self.prompt_edges) + 1:
            raise ValueError(f"pool {self.model}: {len(self.prompt_edges)} edges need "
                             f"{len(self.prompt_edges) + 1} buckets, got {len(self.buckets)}")
        unknown = sorted({n for b in self.buckets for n in b} - set(self.members))
        if unknown or not all(self.buckets):
            raise ValueError(f"pool {self.model}: every bucket lists pools from members (unknown: {unknown})")
        if self.chars_per_token <= 0 or self.cooldown_s < 0:
            raise ValueError(f"pool {self.model}: chars_per_token must be > 0 and cooldown_s >= 0")

    @classmethod
    def from_dict(cls, values: dict) -> "PoolConfig":
        return _from_dict(cls, values)


@dataclass
class FleetFile:
    upstreams: list[UpstreamConfig]
    routers: list[RouterConfig]
    pools: list[PoolConfig] = dataclasses.field(default_factory=list)
    devices: list[dict] = dataclasses.field(default_factory=list)  # validated by fleetlm.hardware.devices
    tool_agents: list = dataclasses.field(default_factory=list)  # compound.programs.tool_agent.ToolAgentConfig


def load_fleet_toml(path: str) -> FleetFile:
    """Read `[[upstream]]`, `[[router]]`, `[[pool]]`, `[[device]]` and `[[tool_agent]]` tables
    from a fleet.toml; unknown tables or keys are errors."""
    import tomllib

    with open(path, "rb") as f:
        data = tomllib.load(f)
    known = ("upstream", "router", "pool", "device", "tool_agent")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {', '.join(unknown)}; known: {', '.join(known)}")
    ups = [UpstreamConfig.from_dict(u) for u in data.get("upstream", [])]
    routers = [RouterConfig.from_dict(r) for r in data.get("router", [])]
    for kind, names in (("upstream", [u.name for u in ups]), ("router", [r.name for r in routers])):
        if len(names) != len(set(names)):
            raise ValueError(f"{path}: {kind} names must be unique")
    if sum(r.default for r in routers) > 1:
        raise ValueError(f"{path}: at most one router can be the default (router/auto)")
    pools = [PoolConfig.from_dict(p) for p in data.get("pool", [])]
    if len({p.model for p in pools}) != len(pools):
        raise ValueError(f"{path}: pool model ids must be unique")
    devices = list(data.get("device", []))
    if devices:
        from fleetlm.hardware.devices import Device

        for d in devices:
            Device.from_dict(dict(d))  # unknown keys and bad values are errors now, not at plan time
    agents = []
    if data.get("tool_agent"):
        from fleetlm.compound.programs.tool_agent import ToolAgentConfig

        agents = [ToolAgentConfig.from_dict(dict(t)) for t in data["tool_agent"]]
        if len({a.name for a in agents}) != len(agents):
            raise ValueError(f"{path}: tool_agent names must be unique")
    return FleetFile(ups, routers, pools, devices, agents)
