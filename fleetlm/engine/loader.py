"""Weights on disk -> a ready model: config.json via `transformers.AutoConfig`, the family
class from `ARCHITECTURES`, *.safetensors loaded by name, the tokenizer from tokenizer.json.

Contract: works from local folders only (no hub access); every parameter of the model must
be found in the checkpoint, and a missing or unexpected tensor is an error, not a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from fleetlm.engine.architectures import ARCHITECTURES
from fleetlm.engine.quant import DEFAULT_GROUP_SIZE


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run about twice as fast as fp32 there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
        return torch.bfloat16 if fast else torch.float32
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
             "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(table)}")
    return table[dtype]


@dataclass
class LoadedModel:
    model: torch.nn.Module
    hf_config: object
    tokenizer: object  # transformers.PreTrainedTokenizerFast
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    eos_token_ids: list[int]


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _eos_ids(path: Path, config, tokenizer) -> list[int]:
    ids: list[int] = []
    gen_cfg = path / "generation_config.json"
    sources = [getattr(config, "eos_token_id", None), tokenizer.eos_token_id]
    if gen_cfg.exists():
        sources.insert(0, json.loads(gen_cfg.read_text()).get("eos_token_id"))
    for src in sources:
        for i in (src if isinstance(src, list) else [src]):
            if i is not None and i not in ids:
                ids.append(int(i))
    return ids


def load_model(path: str | Path, *, dtype: str = "auto", device: str = "auto",
               max_model_len: int | None = None, quantization: str | None = None,
               quantization_group_size: int = DEFAULT_GROUP_SIZE) -> LoadedModel:
    """quantization: None, "int8" or "int4" weight-only linears (engine/quant.py)."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a model folder (no config.json)")
    config = _text_config(AutoConfig.from_pretrained(path, local_files_only=True))
    cls = ARCHITECTURES.get(config.model_type)
    if cls is None:
        raise NotImplementedError(f"model_type {config.model_type!r} is not supported; "
                                  f"supported: {', '.join(ARCHITECTURES)}")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    limit = int(getattr(config, "max_position_embeddings", 8192))
    max_len = min(max_model_len or min(limit, 8192), limit)
    # Build without allocating or random-initialising weights (1.7 s for gemma-3-270m), then
    # give it real storage; every parameter is overwritten by the checkpoint below, and the
    # computed buffers (rope tables) are rebuilt.
    with torch.device("meta"):
        model = cls(config, max_positions=max_len)
    model = model.to_empty(device="cpu")
    model.rebuild_buffers(max_len)
    _load_weights(model, path)
    model.to(device=dev, dtype=torch_dtype).eval()
    model.finalize(quantization=quantization, group_size=quantization_group_size)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return LoadedModel(model, config, tokenizer, torch_dtype, dev, max_len, _eos_ids(path, config, tokenizer))


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    params = dict(model.named_parameters())  # tied weights appear once, under their first name
    tied_head = getattr(model.config, "tie_word_embeddings", False)
    loaded: set[str] = set()
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                name = key.removeprefix("language_model.").replace("model.language_model.", "model.")
                if name == "lm_head.weight" and tied_head:
                    continue
                if name not in params:
                    raise ValueError(f"unexpected tensor {key!r} in {file.name}")
                with torch.no_grad():
                    t = f.get_tensor(key)
                    if t.shape != params[name].shape:
                        raise ValueError(f"{key}: shape {tuple(t.shape)} != {tuple(params[name].shape)}")
                    params[name].copy_(t)
                loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} tensors, e.g. {missing[:3]}")
