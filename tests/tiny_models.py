"""Tiny random-weight models for tests: one small config per family, saved with
`save_pretrained` next to a byte-level BPE tokenizer (256 byte tokens + specials)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<eos>", "<bos>"]
VOCAB = 256 + len(SPECIALS) + 5  # a little spare: ids no text maps to


def byte_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def _configs():
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-6, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    return {
        "llama": LlamaConfig(**common, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        "qwen2": Qwen2Config(**common, tie_word_embeddings=True, rope_parameters={
            "rope_type": "default", "rope_theta": 1000000.0}),
        "gemma3": Gemma3TextConfig(**{**common, "num_key_value_heads": 1}, head_dim=32,
                                   query_pre_attn_scalar=32, sliding_window=8,
                                   layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
    }


FAMILIES = ("llama", "qwen2", "gemma3")


def make_tiny_model(family: str, folder: Path) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed({"llama": 1, "qwen2": 2, "gemma3": 3}[family])
    config = _configs()[family]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random init is tiny; widen it so logits are not all ties
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif p.dim() > 1:
                p.normal_(0, 0.08)
            else:
                p.normal_(0, 0.02)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder
