"""Roofline performance model of one replica: a model shape on `tp` devices of one type.

Contract: `Perf(shape, device, tp).step_time(work)` is the seconds one engine step takes for
`work` (new tokens, attention pairs, KV reads, sampled rows): a fixed per-step overhead plus
the larger of FLOPs over (peak x compute_eff) and bytes over (bandwidth x bandwidth_eff),
plus tensor-parallel all-reduces. Everything else (TTFT, TPOT, tokens/s, $ per million
tokens, KV capacity, largest batch) is derived from it, so the calibration that fits the
three efficiency factors of `Device` fits all of them.

FLOPs per new token: 2 x (non-embedding parameters) + 4 x layers x heads x head_dim per
attended position; the LM head (2 x vocab x hidden) only for rows that sample. Bytes per
step: all weights (once per step, whatever the batch) + the KV cache read, at the bytes per
element of the replica's dtype (`WEIGHT_BYTES`; KV 4 bytes in fp32, else 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from fleetlm.hardware.devices import Device


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # gated MLP (gate, up, down)
    vocab: int
    tied_embeddings: bool = False
    sliding_window: int | None = None  # tokens, for the `sliding_fraction` of layers that use it
    sliding_fraction: float = 0.0

    @property
    def layer_params(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.layers * (2 * h * q + 2 * h * kv + 3 * h * self.intermediate)

    @property
    def params(self) -> int:
        return self.layer_params + self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def kv_bytes_per_token(self, kv_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * kv_bytes


NAMED_SHAPES: dict[str, ModelShape] = {s.name: s for s in [
    # from each model's config.json on the Hugging Face Hub
    ModelShape(name="Llama-3.1-8B", hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128,
               intermediate=14336, vocab=128256),
    ModelShape(name="Llama-3.1-70B", hidden=8192, layers=80, heads=64, kv_heads=8, head_dim=128,
               intermediate=28672, vocab=128256),
    ModelShape(name="Qwen2.5-7B", hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128,
               intermediate=18944, vocab=152064),
    ModelShape(name="Qwen2.5-72B", hidden=8192, layers=80, heads=64, kv_heads=8, head_dim=128,
               intermediate=29568, vocab=152064),
]}


def shape_from_config(path: str | Path) -> ModelShape:
    """A ModelShape from a Hugging Face config.json (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    cfg = json.loads(path.read_text())
    cfg = {**cfg, **cfg.get("text_config", {})}
    try:
        hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        layers = cfg["num_hidden_layers"]
        kw = dict(hidden=hidden, layers=layers, heads=heads,
                  kv_heads=cfg.get("num_key_value_heads") or heads,
                  head_dim=cfg.get("head_dim") or hidden // heads,
                  intermediate=cfg["intermediate_size"], vocab=cfg["vocab_size"])
    except KeyError as exc:
        raise ValueError(f"{path}: config.json lacks {exc.args[0]!r}; not a decoder-only LM config")
    types = cfg.get("layer_types") or []
    sliding = sum(t == "sliding_attention" for t in types) / layers if types else (
        1.0 if cfg.get("use_sliding_window") else 0.0)
    return ModelShape(name=path.parent.name, tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                      sliding_window=cfg.get("sliding_window") if sliding else None,
                      sliding_fraction=sliding, **kw)


def resolve_shape(spec: str) -> ModelShape:
    """A named shape (Llama-3.1-8B, ...) or a path to a config.json / HF folder."""
    if spec in NAMED_SHAPES:
        return NAMED_SHAPES[spec]
    if Path(spec).exists():
        return shape_from_config(spec)
    raise ValueError(f"unknown model {spec!r}: give one of {', '.join(NAMED_SHAPES)} or a config.json path")


@dataclass(frozen=True)
class StepWork:
    """What one engine step computes. Add two with `+` to mix prompt chunks and decodes."""

    tokens: int = 0  # new tokens computed (prompt-chunk tokens + one per decoding sequence)
    attn_pairs: float = 0.0  # sum over new tokens of the positions each attends to
    kv_read: float = 0.0  # sum over sequences of the context tokens read from the KV cache
    sampled: int = 0  # rows whose logits are computed (LM head)
    seqs: int = 0  # sequences in the step

    def __add__(self, o: "StepWork") -> "StepWork":
        return StepWork(self.tokens + o.tokens, self.attn_pairs + o.attn_pairs, self.kv_read + o.kv_read,
                        self.sampled + o.sampled, self.seqs + o.seqs)


def prefill_work(chunk: int, start: int = 0, *, batch: int = 1, samples: bool = True) -> StepWork:
    """`batch` prompt chunks of `chunk` tokens at positions [start, start+chunk)."""
    pairs = chunk * start + chunk * (chunk + 1) / 2
    return StepWork(batch * chunk, batch * pairs, batch * (start + chunk), batch if samples else 0, batch)


def decode_work(batch: int, ctx: float) -> StepWork:
    """`batch` sequences each decoding one token after `ctx` tokens of context."""
    return StepWork(batch, batch * ctx, batch * ctx, batch, batch)


WEIGHT_BYTES = {"bf16": 2, "fp8": 1, "fp32": 4}  # bytes per weight, by Perf.dtype


@dataclass(frozen=True)
class Perf:
    shape: ModelShape
    device: Device
    tp: int = 1  # devices per replica (tensor parallel)
    # Weights and matmuls: bf16, fp8, or fp32 (the engine on a CPU without native bf16). The
    # KV cache and activations are 16-bit for bf16/fp8 and fp32 for fp32, as the engine keeps them.
    dtype: str = "bf16"
    mem_util: float = 0.90  # fraction of device memory the engine may use (weights + KV)
    allreduce_latency_s: float = 5e-6
    _weight_bytes: float = field(init=False, repr=False)
    _act_bytes: int = field(init=False, repr=False)  # per KV / activation element

    def __post_init__(self):
        if not 1 <= self.tp <= self.device.max_tp:
            raise ValueError(f"{self.device.name}: tp must be in 1..{self.device.max_tp}, got {self.tp}")
        if self.dtype not in WEIGHT_BYTES:
            raise ValueError(f"dtype must be one of {', '.join(WEIGHT_BYTES)}, got {self.dtype!r}")
        self.device.peak_flops(self.dtype)  # fp8 (or fp32) on a device without it: a clear error now
        object.__setattr__(self, "_weight_bytes", self.shape.params * WEIGHT_BYTES[self.dtype])
        object.__setattr__(self, "_act_bytes", 4 if self.dtype == "fp32" else 2)

    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token takes on this replica's dtype."""
        return self.shape.kv_bytes_per_token(self._act_bytes)

    @property
    def name(self) -> str:
        return f"{self.device.name}x{self.tp}"

    @property
    def usd_per_hour(self) -> float:
        return self.tp * self.device.usd_per_hour

    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache that fit next to the weights; <= 0: the model does not fit."""
        free = self.tp * self.device.mem_gb * 1e9 * self.mem_util - self._weight_bytes
        return int(free // self.kv_bytes_per_token())

    def fits(self, min_tokens: int = 8192) -> bool:
        return self.kv_capacity_tokens() >= min_tokens

    def max_batch(self, ctx: int) -> int:
        return max(0, self.kv_capacity_tokens() // max(1, ctx))

    def step_time(self, w: StepWork) -> float:
        s, d = self.shape, self.device
        sf, win = s.sliding_fraction, s.sliding_window or 0
        pairs, kv = w.attn_pairs, w.kv_read
        if sf and win:  # sliding-window layers attend to (and read) at most `win` positions
            pairs = (1 - sf) * pairs + sf * min(pairs, w.tokens * win)
            kv = (1 - sf) * kv + sf * min(kv, w.seqs * win)
        flops = (2 * s.layer_params * w.tokens + 4 * s.layers * s.heads * s.head_dim * pairs
                 + 2 * s.vocab * s.hidden * w.sampled)
        bytes_ = self._weight_bytes + self.kv_bytes_per_token() * (kv + w.tokens)
        compute = flops / (self.tp * d.peak_flops(self.dtype) * d.compute_eff)
        memory = bytes_ / (self.tp * d.mem_bw_gbps * 1e9 * d.bandwidth_eff)
        comm = 0.0
        if self.tp > 1:  # two ring all-reduces of the activations per layer
            size = w.tokens * s.hidden * self._act_bytes
            comm = 2 * s.layers * (2 * (self.tp - 1) / self.tp * size / (d.interconnect_gbps * 1e9)
                                   + self.allreduce_latency_s)
        return d.step_overhead_s + max(compute, memory) + comm

    def prefill_time(self, prompt: int, chunk: int | None = None, decode_batch: int = 0,
                     decode_ctx: float = 0.0) -> float:
        """Seconds to compute a prompt in chunks of `chunk` tokens (None: one step), each
        step also carrying `decode_batch` decodes of other sequences."""
        chunk = chunk or prompt
        t, start = 0.0, 0
        while start < prompt:
            c = min(chunk, prompt - start)
            t += self.step_time(prefill_work(c, start, samples=start + c == prompt)
                                + decode_work(decode_batch, decode_ctx))
            start += c
        return t

    def decode_step(self, batch: int, ctx: float) -> float:
        return self.step_time(decode_work(batch, ctx))


@dataclass(frozen=True)
class Estimate:
    ttft_s: float
    tpot_s: float
    output_tok_s: float  # whole replica, at this batch
    usd_per_mtok_output: float  # decode only, at this batch
    usd_per_mtok_prompt: float  # prefill only
    max_batch: int


def estimate(perf: Perf, *, prompt: int, output: int, batch: int) -> Estimate:
    """Steady-state figures for `batch` sequences of `prompt` + `output` tokens."""
    mb = perf.max_batch(prompt + output)
    if mb < 1:
        raise ValueError(f"{perf.shape.name} does not fit on {perf.name} with a {prompt + output}-token sequence")
    if batch > mb:
        raise ValueError(f"batch {batch} does not fit on {perf.name}: its KV cache holds {mb} sequences "
                         f"of {prompt + output} tokens")
    ttft = perf.prefill_time(prompt)
    tpot = perf.decode_step(batch, prompt + output / 2)
    tok_s = batch / tpot
    usd_s = perf.usd_per_hour / 3600
    return Estimate(ttft, tpot, tok_s, usd_s / tok_s * 1e6, usd_s * ttft / prompt * 1e6, mb)


def with_efficiency(device: Device, **factors) -> Device:
    """The device with some efficiency factors replaced (compute_eff, bandwidth_eff, step_overhead_s)."""
    return replace(device, **factors)
