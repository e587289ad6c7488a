"""Qwen2 / Qwen2.5: the Llama stack with biases on q/k/v (not o), and optional sliding
window layers from the config's `layer_types`."""

from __future__ import annotations

from fleetlm.engine.architectures.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True
    o_bias = False
