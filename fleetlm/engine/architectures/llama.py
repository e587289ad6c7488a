"""Llama (2, 3.x) in plain PyTorch: pre-norm decoder, SwiGLU MLP, rope (llama3 scaling
included), grouped-query attention. Qwen2 reuses it with q/k/v biases."""

from __future__ import annotations

from torch import nn

from fleetlm.engine.architectures.common import (
    Attention, CausalLM, GatedMLP, RMSNorm, build_ropes, layer_types_of,
)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, layer_type: str, *, qkv_bias: bool, o_bias: bool):
        super().__init__()
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.self_attn = Attention(config, layer_type=layer_type, qkv_bias=qkv_bias, o_bias=o_bias,
                                   qk_norm=None, scale=head_dim**-0.5)
        self.mlp = GatedMLP(config, nn.SiLU())
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, h, cos_sin, cache, meta):
        h = h + self.self_attn(self.input_layernorm(h), cos_sin, cache, meta)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaForCausalLM(CausalLM):
    qkv_bias: bool | None = None  # None: read `attention_bias` from the config
    o_bias: bool | None = None

    def __init__(self, config, max_positions: int):
        super().__init__()
        self.config = config
        bias = bool(getattr(config, "attention_bias", False))
        qkv_bias = bias if self.qkv_bias is None else self.qkv_bias
        o_bias = bias if self.o_bias is None else self.o_bias
        if getattr(config, "mlp_bias", False):
            raise NotImplementedError("mlp_bias=True is not supported")
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.model.layers = nn.ModuleList(
            LlamaDecoderLayer(config, lt, qkv_bias=qkv_bias, o_bias=o_bias) for lt in layer_types_of(config)
        )
        self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        head_dim = self.model.layers[0].self_attn.head_dim
        self.ropes = build_ropes(config, head_dim, max_positions)
        self.tie_weights_if_needed()
