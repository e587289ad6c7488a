"""Loading the base model for training, and the one forward pass every tuner needs.

``--base gemma-3-270m`` is the embedded model (unpacked once by
:func:`fleetlm.models.embedded.resolve_model_path`); any local Hugging Face folder works too.
Weights are kept in fp32 (LoRA updates are small; bf16 master weights would round them
away) and the matmuls run under bf16 autocast where the CPU supports it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class BaseModel:
    path: Path  # Hugging Face folder of the base
    model: torch.nn.Module  # AutoModelForCausalLM, fp32, eval mode
    tokenizer: object  # its tokenizer (with a chat template)


def resolve_base(base: str, cache_dir: str | None = None) -> Path:
    """``gemma-3-270m`` -> the embedded model's folder; a folder path -> itself (checked)."""
    from fleetlm.models.embedded import resolve_model_path

    return resolve_model_path(base, Path(cache_dir) if cache_dir else None)


def load_base(base: str, *, cache_dir: str | None = None) -> BaseModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_base(base, cache_dir)
    tok = AutoTokenizer.from_pretrained(path)
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{path}: the tokenizer has no chat template; tuning needs one")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    return BaseModel(path=path, model=model, tokenizer=tok)


def resolve_train_dtype(dtype: str) -> str:
    """``auto`` -> ``bf16`` on CUDA or a CPU with native bf16 (AVX-512 BF16 / AMX), else ``fp32``.

    Why: without native bf16 the CPU emulates it and matmuls run ~100x slower than fp32 (measured
    on an AVX2-only EPYC: 0.9 vs 133 GFLOP/s), which would turn a 40-minute tune into days.
    ``bf16`` and ``fp32`` pass through unchanged; anything else is a ValueError.
    """
    if dtype in ("bf16", "fp32"):
        return dtype
    if dtype != "auto":
        raise ValueError(f"dtype must be 'auto', 'bf16' or 'fp32', not {dtype!r}")
    from fleetlm.engine.loader import resolve_device, resolve_dtype

    # The engine's own rule, so training and serving agree on what is fast here.
    return "bf16" if resolve_dtype("auto", resolve_device("auto")) == torch.bfloat16 else "fp32"


def autocast(dtype: str):
    """bf16 autocast context for 'bf16' (CPU or CUDA), nothing for 'fp32'."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype != "bf16":
        raise ValueError(f"dtype must be 'bf16' or 'fp32', not {dtype!r}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def _causal_lm(model) -> torch.nn.Module:
    """The *ForCausalLM module inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def logits_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Logits (fp32) only at positions (rows[i], cols[i]) of a (B, T) batch: (N, vocab).

    The LM head of Gemma 3 is 262k x 640, larger than the rest of the 270M model, so it is
    applied only where a loss is taken, not at every position. Right padding is assumed.
    """
    lm = _causal_lm(model)
    out = lm.model(input_ids=input_ids, attention_mask=attention_mask)
    hidden = out.last_hidden_state[rows, cols]  # (N, hidden)
    logits = lm.lm_head(hidden).float()
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: (input_ids (B, T), attention_mask (B, T))."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask
