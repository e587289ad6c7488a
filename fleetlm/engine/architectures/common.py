"""Building blocks shared by the decoder families: norms, rotary embeddings, the attention
and MLP blocks, and the decoder stack.

Module and parameter names follow `transformers` (model.layers.N.self_attn.q_proj, ...) so
that a Hugging Face state dict loads with no renaming. Every forward takes the flat batch
of this step's tokens (T, hidden) — no padding — plus the paged-attention metadata.
"""

from __future__ import annotations

import torch
from torch import nn

from fleetlm.engine.attention import AttentionMetadata, paged_attention

KVCache = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    """Llama/Qwen RMSNorm: normalise in fp32, cast back, then scale by `weight`."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class GemmaRMSNorm(RMSNorm):
    """Gemma RMSNorm: scale by (1 + weight) in fp32, then cast (weights are stored as offsets)."""

    def __init__(self, dim: int, eps: float):
        super().__init__(dim, eps)
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).to(x.dtype)


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

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (T, H, D), positions: (T,) -> x rotated, in x's dtype (as transformers does)."""
        cos = self.cos[positions].to(x.dtype)[:, None, :]
        sin = self.sin[positions].to(x.dtype)[:, None, :]
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

    def forward(self, x, positions, rope: RotaryEmbedding, cache: KVCache, meta: AttentionMetadata):
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(t, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(t, self.n_kv, self.head_dim)
        if self.has_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(q, positions), rope(k, positions)
        o = paged_attention(q, k, v, cache, meta, layer_type=self.layer_type, scale=self.scale)
        return self.o_proj(o.reshape(t, self.n_heads * self.head_dim))


class GatedMLP(nn.Module):
    def __init__(self, config, act: nn.Module):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = act

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


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
        for layer, cache in zip(self.model.layers, caches):
            h = layer(h, positions, self.ropes[layer.self_attn.layer_type], cache, meta)
        return self.model.norm(h)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, hidden) of the rows that sample -> fp32 logits (N, vocab)."""
        logits = self.lm_head(hidden).float()
        if self.final_logit_softcapping:
            cap = self.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return logits

    def tie_weights_if_needed(self) -> None:
        if getattr(self.config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight


def build_ropes(config, head_dim: int, max_positions: int) -> nn.ModuleDict:
    """One rope table per layer type; per-type parameters when the config has them (Gemma 3)."""
    params = getattr(config, "rope_parameters", None) or {"rope_type": "default",
                                                          "rope_theta": getattr(config, "rope_theta", 10000.0)}
    ropes = {}
    for lt in set(layer_types_of(config)):
        per_type = lt in params and isinstance(params[lt], dict)
        p = params[lt] if per_type else params
        inv, scaling = rope_inv_freq(config, p, head_dim, lt if per_type else None)
        ropes[lt] = RotaryEmbedding(inv, scaling, max_positions)
    return nn.ModuleDict(ropes)
