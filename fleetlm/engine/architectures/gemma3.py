"""Gemma 3 (text) in plain PyTorch: embeddings scaled by sqrt(hidden), Gemma RMSNorm
(1 + w), q/k norms, four norms per layer (sandwich), GELU-tanh MLP, interleaved sliding-window
and global layers with their own rope bases, attention scale query_pre_attn_scalar^-0.5."""

from __future__ import annotations

from torch import nn

from fleetlm.engine.architectures.common import (
    Attention, CausalLM, GatedMLP, GemmaRMSNorm, build_ropes, layer_types_of,
)


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config, layer_type: str):
        super().__init__()
        bias = bool(getattr(config, "attention_bias", False))
        self.self_attn = Attention(config, layer_type=layer_type, qkv_bias=bias, o_bias=bias,
                                   qk_norm=GemmaRMSNorm, scale=config.query_pre_attn_scalar**-0.5)
        self.mlp = GatedMLP(config, nn.GELU(approximate="tanh"))
        dim, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(dim, eps)
        self.post_attention_layernorm = GemmaRMSNorm(dim, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(dim, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(dim, eps)

    def forward(self, h, cos_sin, cache, meta):
        a = self.self_attn(self.input_layernorm(h), cos_sin, cache, meta)
        h = h + self.post_attention_layernorm(a)
        m = self.mlp(self.pre_feedforward_layernorm(h))
        return h + self.post_feedforward_layernorm(m)


class Gemma3ForCausalLM(CausalLM):
    def __init__(self, config, max_positions: int):
        super().__init__()
        if getattr(config, "attn_logit_softcapping", None):
            raise NotImplementedError("attention logit soft-capping is not supported")
        if getattr(config, "use_bidirectional_attention", False):
            raise NotImplementedError("bidirectional (embedding) Gemma 3 is not a causal LM")
        if config.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise NotImplementedError(f"hidden_activation {config.hidden_activation!r}")
        self.config = config
        self.embed_scale = config.hidden_size**0.5
        self.final_logit_softcapping = getattr(config, "final_logit_softcapping", None)
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.model.layers = nn.ModuleList(Gemma3DecoderLayer(config, lt) for lt in layer_types_of(config))
        self.model.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.ropes = build_ropes(config, self.model.layers[0].self_attn.head_dim, max_positions)
        self.tie_weights_if_needed()
