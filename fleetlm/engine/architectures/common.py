"""Building blocks shared by the decoder families: norms, rotary embeddings, the attention
and MLP blocks, and the decoder stack.

Module and parameter names follow `transformers` (model.layers.N.self_attn.q_proj, ...) so
that a Hugging Face state dict loads with no renaming. Every forward takes the flat batch
of this step's tokens (T, hidden) — no padding — plus the paged-attention metadata.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fleetlm.engine.attention import AttentionMetadata, paged_attention
from fleetlm.engine.quant import DEFAULT_GROUP_SIZE, quantize_model
from fleetlm.models.packed import can_pack_linear, pack_linears

KVCache = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    """Llama/Qwen RMSNorm: normalise in fp32, cast back, then scale by `weight`."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * h.to(x.dtype)


class GemmaRMSNorm(RMSNorm):
    """Gemma RMSNorm: scale by (1 + weight) in fp32, then cast (weights are stored as offsets)."""

    def __init__(self, dim: int, eps: float):
        super().__init__(dim, eps)
        nn.init.zeros_(self.weight)
        self.scale: torch.Tensor | None = None  # fp32 (1 + weight), set by finalize()

    def finalize(self) -> None:
        self.scale = 1.0 + self.weight.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale if self.scale is not None else 1.0 + self.weight.float()
        return (F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps) * scale).to(x.dtype)


def rope_inv_freq(config, rope_params: dict, head_dim: int, layer_type: str | None):
    """(inverse frequencies (head_dim/2,), attention scaling) for one rope parameter set.

    Non-default rope types (llama3, yarn, linear, ...) are computed by `transformers`' own
    functions so that scaled-rope checkpoints match it exactly."""
    rope_type = rope_params.get("rope_type", "default")
    if rope_type == "default":
        base = rope_params["rope_theta"]
        dim = int(head_dim * rope_params.get("partial_rotary_factor", 1.0))
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        return inv, 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS or rope_type == "dynamic":
        raise NotImplementedError(f"rope_type {rope_type!r} is not supported by the fleetlm engine")
    kwargs = {"layer_type": layer_type} if layer_type is not None else {}
    return ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"), **kwargs)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables (max_positions, head_dim), indexed by absolute position."""

    def __init__(self, inv_freq: torch.Tensor, scaling: float, max_positions: int):
        super().__init__()
        freqs = torch.arange(max_positions).float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos() * scaling, persistent=False)
        self.register_buffer("sin", emb.sin() * scaling, persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (T, 1, head_dim) in the activations' dtype; looked up once per step."""
        return self.cos[positions].to(dtype)[:, None, :], self.sin[positions].to(dtype)[:, None, :]


def apply_rope(x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x: (T, H, D) rotated by the step's (cos, sin), in x's dtype (as transformers does)."""
    cos, sin = cos_sin
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config, *, layer_type: str, qkv_bias: bool, o_bias: bool,
                 qk_norm: type[nn.Module] | None, scale: float):
        super().__init__()
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.layer_type = layer_type
        self.scale = scale
        hidden, d = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(hidden, self.n_heads * d, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, self.n_kv * d, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, self.n_kv * d, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * d, hidden, bias=o_bias)
        if qk_norm is not None:
            self.q_norm = qk_norm(d, config.rms_norm_eps)
            self.k_norm = qk_norm(d, config.rms_norm_eps)
        self.has_qk_norm = qk_norm is not None
        self.qkv_proj: nn.Linear | None = None  # q, k, v in one matmul, built by finalize()

    def finalize(self) -> None:
        """Fuse q/k/v into one GEMM (one weight read, one call) once the weights are loaded."""
        parts = (self.q_proj, self.k_proj, self.v_proj)
        fused = nn.Linear(self.q_proj.in_features, sum(p.out_features for p in parts),
                          bias=self.q_proj.bias is not None, dtype=self.q_proj.weight.dtype,
                          device=self.q_proj.weight.device)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([p.weight for p in parts]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([p.bias for p in parts]))
        self.qkv_proj = fused
        del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x, cos_sin, cache: KVCache, meta: AttentionMetadata):
        t, d = x.shape[0], self.head_dim
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split([self.n_heads * d, self.n_kv * d, self.n_kv * d], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = q.view(t, self.n_heads, d), k.view(t, self.n_kv, d), v.view(t, self.n_kv, d)
        if self.has_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos_sin), apply_rope(k, cos_sin)
        o = paged_attention(q, k, v, cache, meta, layer_type=self.layer_type, scale=self.scale)
        return self.o_proj(o.reshape(t, self.n_heads * self.head_dim))


class GatedMLP(nn.Module):
    def __init__(self, config, act: nn.Module):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = act

        self.gate_up_proj: nn.Linear | None = None  # built by finalize()

    def finalize(self) -> None:
        """Fuse gate and up projections into one GEMM once the weights are loaded."""
        w = torch.cat([self.gate_proj.weight, self.up_proj.weight])
        fused = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            fused.weight.copy_(w)
        self.gate_up_proj = fused
        del self.gate_proj, self.up_proj

    def forward(self, x):
        if self.gate_up_proj is None:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


def layer_types_of(config) -> list[str]:
    """Per-layer attention kind ("full_attention" / "sliding_attention")."""
    types = getattr(config, "layer_types", None)
    return list(types) if types else ["full_attention"] * config.num_hidden_layers


class CausalLM(nn.Module):
    """The shared stack: embed -> layers -> final norm; logits from chosen rows only.

    Subclasses build `self.model` (embed_tokens, layers, norm), `self.lm_head`, the rope
    tables (`self.ropes`: layer type -> RotaryEmbedding) and set `self.embed_scale`."""

    config: object
    embed_scale: float | None = None
    final_logit_softcapping: float | None = None

    @property
    def kv_shape(self) -> tuple[int, int, int]:
        """(num_layers, num_kv_heads, head_dim) of the KV cache this model needs."""
        attn = self.model.layers[0].self_attn
        return len(self.model.layers), attn.n_kv, attn.head_dim

    @property
    def windows(self) -> dict[str, int | None]:
        """Layer type -> sliding window (None for full attention)."""
        win = getattr(self.config, "sliding_window", None)
        return {t: (win if t == "sliding_attention" else None) for t in set(layer_types_of(self.config))}

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, caches: list[KVCache],
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: (T,) -> hidden states after the final norm, (T, hidden)."""
        h = self.model.embed_tokens(input_ids)
        if self.embed_scale is not None:
            # transformers scales in the weights' dtype; so do we, for identical rounding
            h = h * torch.tensor(self.embed_scale, dtype=h.dtype)
        cos_sin = {lt: rope.cos_sin(positions, h.dtype) for lt, rope in self.ropes.items()}
        for layer, cache in zip(self.model.layers, caches):
            h = layer(h, cos_sin[layer.self_attn.layer_type], cache, meta)
        return self.model.norm(h)

    def finalize(self, *, quantization: str | None = None, group_size: int = DEFAULT_GROUP_SIZE) -> None:
        """Call once after loading weights and moving to the final dtype/device: fuses
        projections, precomputes norm scales, quantizes the linears when `quantization` is
        "int8" or "int4" (see engine/quant.py) and packs the rest for oneDNN (inference only;
        the module is not trainable afterwards)."""
        for m in list(self.modules()):
            if m is not self and hasattr(m, "finalize"):
                m.finalize()
        if quantization is not None:  # after fusion (one scale set per fused GEMM), before packing
            quantize_model(self, quantization, group_size=group_size)
        p = self.model.embed_tokens.weight
        if can_pack_linear(p.dtype, p.device):
            pack_linears(self)  # the tied LM head gets its own packed copy; embeddings stay

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, hidden) of the rows that sample -> logits (N, vocab) in the model's
        dtype (fp32 when soft-capped); the sampler widens only the rows it must."""
        logits = self.lm_head(hidden)
        if self.final_logit_softcapping:
            cap = self.final_logit_softcapping
            logits = torch.tanh(logits.float() / cap) * cap
        return logits

    def rebuild_buffers(self, max_positions: int) -> None:
        """Recompute non-weight state (rope tables) and re-tie the LM head: after building on
        the meta device, these hold no values yet."""
        head_dim = self.model.layers[0].self_attn.head_dim
        self.ropes = build_ropes(self.config, head_dim, max_positions)
        self.tie_weights_if_needed()

    def tie_weights_if_needed(self) -> None:
        if getattr(self.config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight


def build_ropes(config, head_dim: int, max_positions: int) -> nn.ModuleDict:
    """One rope table per layer type; per-type parameters when the config has them (Gemma 3)."""
    params = getattr(config, "rope_parameters", None) or {"rope_type": "default",
                                                          "rope_theta": getattr(config, "rope_theta", 10000.0)}
    ropes = {}
    with torch.device("cpu"):  # computed values, even when the model is built on "meta"
        for lt in set(layer_types_of(config)):
            per_type = lt in params and isinstance(params[lt], dict)
            p = params[lt] if per_type else params
            inv, scaling = rope_inv_freq(config, p, head_dim, lt if per_type else None)
            ropes[lt] = RotaryEmbedding(inv, scaling, max_positions)
    return nn.ModuleDict(ropes)
