"""LoRA supervised fine-tuning on OpenAI chat JSONL: ``fleet tune sft``.

    fleet tune sft --base gemma-3-270m --data train.jsonl --out adapters/NAME

Loss: cross-entropy on assistant tokens only (:mod:`fleetlm.tune.data`). Held-out loss on
``--eval-data`` or, without it, on a seeded ``--eval-fraction`` of ``--data``. Checkpoints go
to ``<out>.ckpt/`` (``--resume`` continues from the latest); the adapter is written in PEFT
format with a model card (card.json + README.md: base, data sha256, hyper-parameters,
metrics) by :func:`fleetlm.tune.trainer.save_adapter_atomic`.

``--init-adapter DIR`` starts from an existing adapter's weights instead of LoRA's zero
start (a second stage on new data); its rank, alpha and target modules must be the ones
given, and the card records it (path, sha256 of its weights, its own card's data).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fleetlm.tune.base import load_base, logits_at, pad_batch
from fleetlm.tune.data import DataError, TokenizedExample, file_sha256, load_chat_jsonl, tokenize_chat
from fleetlm.tune.trainer import LoopParams, LoraParams, make_lora, params_dict, save_adapter_atomic, train_lora


@dataclass(kw_only=True)
class SFTConfig:
    base: str  # "gemma-3-270m" or a Hugging Face folder
    data: str  # chat JSONL
    out: str  # adapter folder to write
    eval_data: str | None = None  # held-out chat JSONL; default: eval_fraction of data
    eval_fraction: float = 0.1
    max_len: int = 512  # tokens per example (longer ones are truncated)
    resume: bool = False
    cache_dir: str | None = None
    init_adapter: str | None = None  # adapter folder whose weights training starts from
    lora: LoraParams = field(default_factory=LoraParams)
    loop: LoopParams = field(default_factory=LoopParams)

    def __post_init__(self):
        if not 0 < self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in (0, 1)")


@dataclass
class SFTResult:
    out: Path | None  # None when stopped early (max_steps): resume to finish
    card: dict


def ce_loss(model, batch: list[TokenizedExample], pad_id: int) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the masked (assistant) target tokens of a batch."""
    ids, attn = pad_batch([b.input_ids for b in batch], pad_id)
    rows, cols, targets = [], [], []
    for i, b in enumerate(batch):
        for t in range(1, len(b.input_ids)):
            if b.loss_mask[t]:
                rows.append(i)
                cols.append(t - 1)  # the logits at t-1 predict token t
                targets.append(b.input_ids[t])
    logits = logits_at(model, ids, attn, torch.tensor(rows), torch.tensor(cols))
    return torch.nn.functional.cross_entropy(logits, torch.tensor(targets), reduction="sum"), len(targets)


def split_holdout(items: list, fraction: float, seed: int) -> tuple[list, list]:
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, round(len(items) * fraction))
    if n_eval >= len(items):
        raise DataError(f"only {len(items)} examples: too few to hold out {fraction:.0%} for evaluation")
    return [items[i] for i in order[n_eval:]], [items[i] for i in order[:n_eval]]


def mean_loss(model, items: list[TokenizedExample], pad_id: int, batch_size: int) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            s, k = ce_loss(model, items[i:i + batch_size], pad_id)
            total, n = total + s.item(), n + k
    return total / max(1, n)


def _tokenize_all(tok, examples, max_len: int) -> list[TokenizedExample]:
    out = [tokenize_chat(tok, e, max_len=max_len) for e in examples]
    kept = [t for t in out if any(t.loss_mask[1:])]
    if not kept:
        raise DataError(f"no example has an assistant token within max_len={max_len}")
    return kept


def read_init_adapter(path: str, lora: LoraParams) -> tuple[dict, dict]:
    """(PEFT state dict, provenance for the card) of an adapter to start from; a ValueError when
    it is missing or its rank, alpha or target modules differ from `lora` (the LoRA shapes and
    scale would not be the same)."""
    from safetensors.torch import load_file

    folder = Path(path)
    config_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise ValueError(f"--init-adapter {path}: no adapter_config.json + adapter_model.safetensors there")
    config = json.loads(config_path.read_text())
    theirs = {"rank": config.get("r"), "alpha": float(config.get("lora_alpha") or 0),
              "target_modules": sorted(config.get("target_modules") or [])}
    ours = {"rank": lora.rank, "alpha": float(lora.alpha), "target_modules": sorted(lora.target_modules)}
    if theirs != ours:
        diff = ", ".join(f"{k} {theirs[k]} (given {ours[k]})" for k in ours if theirs[k] != ours[k])
        raise ValueError(f"--init-adapter {path} has {diff}: pass the same --rank, --alpha and --target-modules")
    card_path = folder / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return load_file(str(weights)), {"path": str(folder), "sha256": file_sha256(str(weights)),
                                     "data": card.get("data"), "metrics": card.get("metrics")}


def run_sft(cfg: SFTConfig) -> SFTResult:
    torch.manual_seed(cfg.loop.seed)
    train_ex = load_chat_jsonl(cfg.data)  # validated before the model is loaded
    eval_ex = load_chat_jsonl(cfg.eval_data) if cfg.eval_data else None
    init_state, init_card = read_init_adapter(cfg.init_adapter, cfg.lora) if cfg.init_adapter else (None, None)
    base = load_base(cfg.base, cache_dir=cfg.cache_dir)
    tok = base.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    train = _tokenize_all(tok, train_ex, cfg.max_len)
    held = _tokenize_all(tok, eval_ex, cfg.max_len) if eval_ex else None
    if held is None:
        train, held = split_holdout(train, cfg.eval_fraction, cfg.loop.seed)
    data_hash = file_sha256(cfg.data)
    hyper = {**params_dict(cfg.lora, cfg.loop), "max_len": cfg.max_len, "eval_fraction": cfg.eval_fraction}
    hyper.pop("max_steps")  # an interruption point is not a hyper-parameter
    run_id = [data_hash, hyper, str(base.path)]
    if init_card:  # a different starting adapter is a different run
        run_id.append(init_card["sha256"])
    fingerprint = hashlib.sha256(json.dumps(run_id, sort_keys=True, default=str).encode()).hexdigest()
    model = make_lora(base.model, cfg.lora)
    if init_state is not None:
        from peft import set_peft_model_state_dict

        loaded = set_peft_model_state_dict(model, init_state)
        if loaded.unexpected_keys:  # names that match no LoRA layer of this base model
            raise ValueError(f"--init-adapter {cfg.init_adapter} does not fit {cfg.base}: "
                             f"{len(loaded.unexpected_keys)} tensors match no layer, e.g. {loaded.unexpected_keys[0]}")
    out = Path(cfg.out)
    result = train_lora(model, train, loss_fn=lambda m, b: ce_loss(m, b, pad_id),
                        eval_fn=lambda: mean_loss(model, held, pad_id, cfg.loop.batch_size),
                        loop=cfg.loop, ckpt_dir=out.with_name(out.name + ".ckpt"),
                        fingerprint=fingerprint, resume=cfg.resume, desc=f"sft {out.name}")
    card = {
        "name": out.name, "kind": "sft", "base": cfg.base, "base_path": str(base.path),
        "command": "fleet tune sft",
        "data": {"train": cfg.data, "sha256": data_hash, "eval": cfg.eval_data or f"{cfg.eval_fraction:.0%} of train",
                 "eval_sha256": file_sha256(cfg.eval_data) if cfg.eval_data else None,
                 "train_examples": len(train), "eval_examples": len(held),
                 "train_tokens": sum(len(t.input_ids) for t in train)},
        "hyperparameters": hyper,
        **({"init_adapter": init_card} if init_card else {}),
        "metrics": {"eval_loss_before": round(result.eval_loss_before, 4),
                    "eval_loss_after": round(result.eval_loss_after, 4),
                    "train_loss_last10": round(result.train_loss_last, 4), "steps": result.steps,
                    "train_seconds": round(result.seconds, 1)},
    }
    if result.steps < result.total_steps:
        return SFTResult(out=None, card=card)
    return SFTResult(out=save_adapter_atomic(model, out, card), card=card)
