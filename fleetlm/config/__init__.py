"""One validated dataclass per component (`fleetlm.fleet_toml` reads them from a file).
Unknown keys are errors, never ignored; every dataclass is built by the one `from_dict`.

This package imports nothing else of fleetlm: every layer may read its configuration. The
dataclasses are here; `base.py` has the machinery they share (re-exported here)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fleetlm.config.base import (  # noqa: F401 - re-exported: callers import them from fleetlm.config
    DATA_DIR_ENV,
    ConfigKeyError,
    FromDict,
    default_of,
    from_dict,
    given,
    shared_data,
)


@dataclass(kw_only=True)
class EngineConfig(FromDict):
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
    # Attention: "auto" uses the native CPU decode kernel on CPU when it builds (compiled once,
    # cached) and the Triton paged kernels (decode and prompt chunks) on CUDA when triton
    # imports, else PyTorch SDPA over gathered blocks; "torch" forces SDPA, "cpu_kernel" and
    # "triton" force their kernel or fail (triton on a CPU only under TRITON_INTERPRET=1, for tests).
    attention_backend: str = "auto"
    # Linux/glibc, CPU: keep large freed buffers in the heap instead of returning them to the
    # OS, so each step's 30+ MB logits buffer is not page-faulted in again (a process-wide
    # malloc setting; measured: LM head 35 -> 28 ms, logits widening 25 -> 14 ms).
    tune_malloc: bool = True
    # Multi-LoRA: adapters (PEFT folders) served in the same batch as the base model.
    enable_lora: bool = False
    max_loras: int = 8  # adapters resident at once (slots); others load from disk on demand, LRU
    max_lora_rank: int = 64  # larger adapters are refused with a clear error
    # Speculative decoding: "ngram" drafts from earlier text (prompt lookup), verified
    # losslessly; paused while more than speculative_max_batch rows decode. None: off.
    speculative: str | None = None
    num_draft_tokens: int = 8  # longest draft per step (adapted per sequence)
    speculative_max_batch: int = 4
    # Weight-only quantized linears (docs/quantization.md): None, "int8" (per output channel)
    # or "int4" (groups of quantization_group_size inputs); the embedding keeps `dtype`.
    quantization: str | None = None
    quantization_group_size: int = 64  # int4 only: 32, 64, 128 or 256

    def __post_init__(self):
        positive = ["block_size", "max_num_seqs", "max_num_batched_tokens"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ["max_model_len", "num_kv_blocks", "num_threads"]:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1 or None, got {value}")
        if self.attention_backend not in ("auto", "torch", "cpu_kernel", "triton"):
            raise ValueError(f"EngineConfig.attention_backend must be auto, torch, cpu_kernel or triton, "
                             f"got {self.attention_backend!r}")
        if self.kv_cache_memory_gb <= 0:
            raise ValueError("EngineConfig.kv_cache_memory_gb must be > 0")
        if self.max_loras < 1 or self.max_lora_rank < 1:
            raise ValueError("EngineConfig.max_loras and max_lora_rank must be >= 1")
        if self.speculative not in (None, "ngram"):
            raise ValueError(f"EngineConfig.speculative must be 'ngram' or None, got {self.speculative!r}")
        if not 1 <= self.num_draft_tokens <= 16 or self.speculative_max_batch < 1:
            raise ValueError(f"EngineConfig.num_draft_tokens must be in [1, 16] and speculative_max_batch >= 1, "
                             f"got {self.num_draft_tokens} and {self.speculative_max_batch}")
        if self.quantization not in (None, "int8", "int4"):
            raise ValueError(f"EngineConfig.quantization must be None, 'int8' or 'int4', got {self.quantization!r}")
        if self.quantization_group_size not in (32, 64, 128, 256):
            raise ValueError(f"EngineConfig.quantization_group_size must be 32, 64, 128 or 256, "
                             f"got {self.quantization_group_size!r}")


@dataclass(kw_only=True)
class ServerConfig(FromDict):
    host: str = "127.0.0.1"  # loopback by default; pass 0.0.0.0 deliberately to expose it
    port: int = 8000
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer <key>`
    served_model_name: str | None = None  # model id clients use; default: the engine's model id
    max_pending_requests: int = 256  # generation requests in flight; beyond it: 429 + Retry-After
    max_body_bytes: int = 8 * 2**20  # larger request bodies get 413
    # the request line and headers together; uvicorn refuses a larger head before the app sees it
    # (room for an over-long Authorization header, answered as the 401 it is)
    max_request_head_bytes: int = 2 * 2**20
    enable_embeddings: bool = True  # serve all-MiniLM-L6-v2 on /v1/embeddings
    shutdown_timeout_s: float = 30.0  # graceful shutdown: in-flight requests get this long
    # a client that takes no part of an answer for this long (it stopped reading; the socket
    # buffers are full) is dropped: its engine rows, KV blocks and admission slot are freed
    send_timeout_s: float = 60.0
    # LoRA adapters (engine started with enable_lora): each sub-folder is served as
    # `<model id>:<folder name>`; the folder is rescanned at most every adapter_rescan_s.
    adapters_dir: str | None = None
    adapter_rescan_s: float = 2.0
    # Tool budget: requests with more tools keep the most relevant max_tools (None: all).
    max_tools: int | None = None
    # Preparing one request for the engine (template, tokens, grammar compile) past this: 400.
    prepare_timeout_s: float = 10.0
    # Compound programs: a folder of .py files whose @program functions are served as
    # compound/<name> (a broken file is logged and skipped; the others still load).
    programs_dir: str | None = None
    # What the local model and its adapters cost, $ per million tokens: priced usage, budgets.
    price_input_per_mtok: float = 0.0
    price_output_per_mtok: float = 0.0

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ValueError(f"ServerConfig.port must be in 1..65535, got {self.port}")
        if self.prepare_timeout_s <= 0 or self.send_timeout_s <= 0:
            raise ValueError("ServerConfig.prepare_timeout_s and send_timeout_s must be > 0")
        if self.max_pending_requests < 1 or self.max_body_bytes < 1024:
            raise ValueError("ServerConfig.max_pending_requests must be >= 1 and max_body_bytes >= 1024")


@dataclass(kw_only=True)
class UpstreamConfig(FromDict):
    """An OpenAI-compatible server whose models are served as `upstream/<name>/<model>`."""

    name: str
    base_url: str  # e.g. http://127.0.0.1:8001/v1
    models: list[str]
    api_key_env: str | None = None  # environment variable holding its API key (never the key itself)
    price_input_per_mtok: float = 0.0  # $ per million prompt tokens
    price_output_per_mtok: float = 0.0  # $ per million completion tokens
    timeout_s: float = 120.0  # whole request (a stream: between chunks)
    connect_timeout_s: float = 5.0
    # an answer, streamed or not, ends this long after its request at the latest (a stream
    # with an in-band 504 error): an upstream that streams forever holds nothing forever
    max_stream_s: float = 600.0

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"upstream name must be non-empty without '/', got {self.name!r}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"upstream {self.name}: base_url must start with http:// or https://")
        if not self.models:
            raise ValueError(f"upstream {self.name}: list at least one model")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0 or self.max_stream_s <= 0:
            raise ValueError(f"upstream {self.name}: timeouts must be > 0")


@dataclass(kw_only=True)
class RouterConfig(FromDict):
    """A router served as `router/<name>` (and `router/auto` when `default`)."""

    name: str
    # candidate name (as the routing policy knows it) -> catalog model id that serves it
    candidates: dict[str, str]
    path: str | None = None  # a trained router folder (fleet router train --out ...)
    order: list[str] | None = None  # without `path`: a fixed preference order (fallback chain)
    lam: float | None = None  # quality - lam * cost trade-off; None keeps the trained router's
    cooldown_s: float = 30.0  # a failing candidate is skipped this long
    default: bool = False  # also serve it as router/auto and compound/auto

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


@dataclass(kw_only=True)
class PoolConfig(FromDict):
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


@dataclass(frozen=True, kw_only=True)
class Device(FromDict):
    """A device kind for hardware planning: peaks, memory, price (see fleetlm.hardware.devices)."""

    name: str
    kind: str = "gpu"  # gpu | cpu
    bf16_tflops: float  # dense bf16 peak, TFLOP/s (tensor cores / AMX / AVX-512 BF16)
    fp8_tflops: float | None = None  # dense fp8 peak, TFLOP/s; None where the chip has no fp8
    # Dense fp32 matmul peak, TFLOP/s; None where not known. Measured for the local CPU, where
    # the engine runs fp32 unless bf16 is native (AVX-512 BF16 / AMX).
    fp32_tflops: float | None = None
    mem_bw_gbps: float  # memory bandwidth, GB/s (1e9 bytes)
    mem_gb: float  # device memory, GB (1e9 bytes)
    interconnect_gbps: float = 0.0  # per direction, between devices of one replica (tensor parallel)
    network_gbps: float = 3.0  # per direction, between replicas (KV transfer when prefill/decode split)
    usd_per_hour: float  # typical on-demand price per device
    max_tp: int = 8  # most devices one replica may span (one server)
    compute_eff: float = 0.55  # fraction of peak FLOP/s reached
    bandwidth_eff: float = 0.70  # fraction of peak bandwidth reached
    step_overhead_s: float = 0.002  # fixed cost per engine step (launches, scheduling, sampling)
    source: str = ""

    def __post_init__(self):
        if self.kind not in ("gpu", "cpu"):
            raise ValueError(f"device {self.name}: kind must be gpu or cpu, got {self.kind!r}")
        for f in ("bf16_tflops", "mem_bw_gbps", "mem_gb", "compute_eff", "bandwidth_eff"):
            if not getattr(self, f) > 0:
                raise ValueError(f"device {self.name}: {f} must be > 0, got {getattr(self, f)}")
        for f in ("fp8_tflops", "fp32_tflops"):
            if getattr(self, f) is not None and not getattr(self, f) > 0:
                raise ValueError(f"device {self.name}: {f} must be > 0 when given, got {getattr(self, f)}")
        if self.usd_per_hour < 0 or self.step_overhead_s < 0 or self.max_tp < 1:
            raise ValueError(f"device {self.name}: usd_per_hour and step_overhead_s must be >= 0, max_tp >= 1")
        if self.max_tp > 1 and self.interconnect_gbps <= 0:
            raise ValueError(f"device {self.name}: max_tp > 1 needs interconnect_gbps > 0")

    def peak_flops(self, dtype: str = "bf16") -> float:
        """FLOP/s at peak for weights/activations in `dtype` (bf16, fp8 or fp32)."""
        if dtype == "fp8":
            if self.fp8_tflops is None:
                raise ValueError(f"{self.name} has no fp8 tensor throughput")
            return self.fp8_tflops * 1e12
        if dtype == "fp32":
            if self.fp32_tflops is None:
                raise ValueError(f"{self.name} has no fp32 figure (fp32_tflops); `fleet hardware "
                                 f"devices --local` measures this machine's")
            return self.fp32_tflops * 1e12
        if dtype != "bf16":
            raise ValueError(f"dtype must be bf16, fp8 or fp32, got {dtype!r}")
        return self.bf16_tflops * 1e12


@dataclass(kw_only=True)
class HttpToolConfig(FromDict):
    """An HTTP endpoint a tool agent may call as a tool (`[[tool_agent.http]]`)."""

    name: str
    url: str
    description: str
    parameters: dict  # JSON schema of the arguments
    method: str = "POST"
    headers: dict[str, str] | None = None
    timeout_s: float | None = None  # None: the agent's call_timeout_s
    # loopback, private and link-local targets are refused unless allowed (a server on the same network)
    allow_private: bool = False


@dataclass(kw_only=True)
class ToolAgentConfig(FromDict):
    """An LLMCompiler-style agent over the server's own tools, served as `compound/<name>`."""

    name: str  # served as compound/<name>
    planner: str  # catalog model id that writes plans
    joiner: str | None = None  # catalog model id that answers; None: the planner
    tools: list[str] = field(default_factory=list)  # Python tools, "package.module:function"
    http: list[HttpToolConfig] = field(default_factory=list)  # dicts are converted (and checked)
    sqlite: str | None = None  # path of a SQLite file: a read-only `sql` tool
    docs: str | None = None  # folder of .txt/.md files: a `search_docs` tool (MiniLM)
    max_rounds: int = 2  # plan -> execute -> join rounds before the joiner must answer
    call_timeout_s: float = 30.0  # per tool-call attempt
    retries: int = 1  # extra attempts for a failed or timed-out call
    max_tokens: int = 512  # per planner / joiner call

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*", self.name):
            raise ValueError(f"tool agent name {self.name!r}: letters, digits, '_', '.', '-' only")
        if self.max_rounds < 1 or self.max_tokens < 1 or self.retries < 0 or self.call_timeout_s <= 0:
            raise ValueError(f"tool agent {self.name}: need max_rounds >= 1, max_tokens >= 1, retries >= 0, "
                             "call_timeout_s > 0")
        self.http = [h if isinstance(h, HttpToolConfig) else
                     HttpToolConfig.from_dict(dict(h), label=f"tool agent {self.name}: http tool {h.get('name', '?')}")
                     for h in self.http]
        if not (self.tools or self.http or self.sqlite or self.docs):
            raise ValueError(f"tool agent {self.name}: configure at least one tool (tools, http, sqlite or docs)")


@dataclass(kw_only=True)
class Budget(FromDict):
    """What one request to a compound program may spend; None: no limit. A program over its
    budget is stopped with a 4xx naming the limit."""

    max_calls: int | None = 64  # model calls (each sample of a fork counts)
    max_tokens: int | None = None  # prompt + completion tokens over all calls
    max_usd: float | None = None  # cost at the served models' prices
    max_seconds: float | None = 300.0  # wall time of the whole program

    def __post_init__(self):
        for name in ("max_calls", "max_tokens", "max_usd", "max_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"budget {name} must be > 0 or unset, got {value}")


@dataclass(kw_only=True)
class ProgramConfig(FromDict):
    """`[[program]]`: a registered program (built-in, from --programs-dir or an installed
    package) served as `compound/<name>` with its keyword arguments fixed."""

    name: str  # served as compound/<name>
    program: str  # the registered program's name
    params: dict = field(default_factory=dict)  # keyword arguments of the program function
    budget: Budget = field(default_factory=Budget)  # `[program.budget]`: dicts are converted
    tools: list[str] = field(default_factory=list)  # Python tools for ctx.tool / ctx.plan, "module:function"
    tool_timeout_s: float = 30.0  # per tool call

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*", self.name):
            raise ValueError(f"program name {self.name!r}: letters, digits, '_', '.', '-' only")
        if isinstance(self.budget, dict):
            self.budget = Budget.from_dict(self.budget, label=f"program {self.name}: budget")
        if self.tool_timeout_s <= 0:
            raise ValueError(f"program {self.name}: tool_timeout_s must be > 0")


@dataclass(kw_only=True)
class TenantsConfig(FromDict):
    """`[tenants]`: API keys with budgets and rate limits, the usage ledger and the Batch API,
    kept in one database. With it, every path but /health needs a key (a tenant's, or the
    server's `api_key`, which is the master key and the only one that may manage keys)."""

    database: str = "fleetlm.db"  # SQLite file (relative to fleet.toml), or a postgresql:// URL
    files_dir: str | None = None  # uploads, batch output (local disk): <database>.files; a URL: fleetlm-files
    batch_discount: float = 0.5  # batch requests are billed at (1 - discount) of the model's prices
    batch_concurrency: int = 2  # batch lines in flight at once (interactive traffic comes first)
    max_file_bytes: int = 100 * 2**20  # largest upload to /v1/files
    max_batch_lines: int = 50_000  # most requests in one batch input file
    key_cache_s: float = 2.0  # a key's record is re-read after this long (revocation takes effect within it)
    default_max_tokens: int = 4096  # completion length assumed for a budget when a request sets none

    def __post_init__(self):
        if not 0 <= self.batch_discount < 1:
            raise ValueError(f"tenants batch_discount must be in [0, 1), got {self.batch_discount}")
        if self.batch_concurrency < 1 or self.max_batch_lines < 1 or self.max_file_bytes < 1:
            raise ValueError("tenants batch_concurrency, max_batch_lines and max_file_bytes must be >= 1")
        if self.key_cache_s < 0 or self.default_max_tokens < 1:
            raise ValueError("tenants key_cache_s must be >= 0 and default_max_tokens >= 1")
        if self.files_dir is None:
            self.files_dir = "fleetlm-files" if is_postgres_url(self.database) else f"{self.database}.files"


def is_postgres_url(database: str) -> bool:
    """`[tenants] database` names a PostgreSQL database (a libpq URL), not a SQLite file."""
    return database.startswith(("postgresql://", "postgres://"))
