"""The LoRA training loop shared by SFT and distillation: batches, AdamW, tqdm progress,
held-out evaluation, checkpoints it can resume from, and the atomic adapter save.

Contract: ``train_lora`` owns the step counter. Batches are cut from one permutation per
epoch (seeded by ``seed + epoch``), so a run resumed from a checkpoint at step k sees exactly
the batches the uninterrupted run would have seen from step k on. A checkpoint is one file,
``<ckpt_dir>/step-NNNNNN.pt`` (adapter weights, optimizer, RNG, a fingerprint of the data and
hyper-parameters), written to a temporary name and renamed; resuming with a different
fingerprint is an error rather than a silent mix of two runs.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fleetlm.tune.base import autocast, resolve_train_dtype


@dataclass(kw_only=True)
class LoraParams:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self):
        if not 1 <= self.rank <= 64:
            raise ValueError(f"rank must be in 1..64 (the engine serves ranks up to 64), not {self.rank}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one projection")


@dataclass(kw_only=True)
class LoopParams:
    lr: float = 2e-4
    epochs: float = 1.0  # may be fractional: 0.5 trains on half an epoch
    batch_size: int = 8
    seed: int = 0
    dtype: str = "auto"  # matmul autocast: bf16 | fp32 | auto (resolved here); weights stay fp32
    checkpoint_every: int = 50  # steps; 0 = only at the end of training
    max_steps: int | None = None  # stop early at this global step (a checkpoint is written)
    eval_every: int = 0  # steps; 0 = evaluate before and after training only
    warmup_steps: int = 5

    def __post_init__(self):
        if self.lr <= 0 or self.epochs <= 0 or self.batch_size < 1:
            raise ValueError("lr and epochs must be > 0 and batch_size >= 1")
        self.dtype = resolve_train_dtype(self.dtype)  # "auto" -> what this machine runs fast


def make_lora(model, lora: LoraParams):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def _trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _adapter_state(model) -> dict:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(ckpt_dir.glob("step-*.pt")) if ckpt_dir.is_dir() else []
    return found[-1] if found else None


@dataclass
class TrainResult:
    steps: int
    total_steps: int  # steps < total_steps: stopped early (max_steps); resume to finish
    eval_loss_before: float
    eval_loss_after: float
    train_loss_last: float  # mean over the last 10 steps
    seconds: float
    history: list[dict]  # {"step", "train_loss"} and {"step", "eval_loss"} records


def train_lora(model, items: Sequence, *, loss_fn: Callable, eval_fn: Callable[[], float],
               loop: LoopParams, ckpt_dir: Path, fingerprint: str, resume: bool,
               desc: str = "train") -> TrainResult:
    """Train the trainable (LoRA) parameters of ``model`` on ``items``.

    ``loss_fn(model, batch_items) -> (loss_sum, n_targets)``; the step minimises
    loss_sum / n_targets. ``eval_fn()`` returns the held-out loss (no grad).
    """
    from peft import set_peft_model_state_dict
    from tqdm import tqdm

    per_epoch = math.ceil(len(items) / loop.batch_size)
    total = max(1, round(per_epoch * loop.epochs))
    params = _trainable(model)
    opt = torch.optim.AdamW(params, lr=loop.lr, weight_decay=0.0)
    warm = max(1, loop.warmup_steps)  # linear warm-up, then linear decay to 0 at the last step
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    step, history, before = 0, [], None
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last = latest_checkpoint(ckpt_dir) if resume else None
    if resume and last is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
    if last is not None:
        state = torch.load(last, weights_only=False)
        if state["fingerprint"] != fingerprint:
            raise ValueError(f"{last} was written by a run with other data or hyper-parameters; "
                             "refusing to resume (start afresh without --resume; the matmul dtype counts "
                             "too: --dtype auto picks fp32 on CPUs without native bf16, so pass the dtype "
                             "the run began with)")
        set_peft_model_state_dict(model, state["adapter"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, history, before = state["step"], state["history"], state["eval_loss_before"]
    start = time.monotonic()
    if before is None:
        before = eval_fn()
        history.append({"step": 0, "eval_loss": before})

    def save_ckpt() -> None:
        _atomic_torch_save({"step": step, "adapter": _adapter_state(model), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
                            "history": history, "eval_loss_before": before, "fingerprint": fingerprint},
                           ckpt_dir / f"step-{step:06d}.pt")
        for old in sorted(ckpt_dir.glob("step-*.pt"))[:-2]:  # keep the last two
            old.unlink(missing_ok=True)

    stop_at = min(total, loop.max_steps) if loop.max_steps else total
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True)
    model.train()
    while step < stop_at:
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(loop.seed + epoch))
        batch = [items[i] for i in order[k * loop.batch_size:(k + 1) * loop.batch_size].tolist()]
        with autocast(loop.dtype):
            loss_sum, n = loss_fn(model, batch)
        loss = loss_sum / max(1, n)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        history.append({"step": step, "train_loss": round(loss.item(), 5)})
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if loop.eval_every and step % loop.eval_every == 0 and step < total:
            model.eval()
            history.append({"step": step, "eval_loss": eval_fn()})
            model.train()
        if loop.checkpoint_every and step % loop.checkpoint_every == 0 and step < stop_at:
            save_ckpt()
    bar.close()
    model.eval()
    save_ckpt()
    after = eval_fn() if step >= total else float("nan")
    history.append({"step": step, "eval_loss": after})
    tail = [h["train_loss"] for h in history if "train_loss" in h][-10:]
    return TrainResult(steps=step, total_steps=total, eval_loss_before=before, eval_loss_after=after,
                       train_loss_last=sum(tail) / max(1, len(tail)), seconds=time.monotonic() - start,
                       history=history)


def save_adapter_atomic(model, out: Path, card: dict) -> Path:
    """``save_pretrained`` into a temporary sibling, write the model card (card.json and
    README.md) beside the adapter, then rename into ``out`` (an old ``out`` is moved aside
    first and deleted after), so readers never see a half-written adapter folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        model.save_pretrained(tmp)
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "README.md").write_text(card_markdown(card))
        aside = None
        if out.exists():
            aside = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
            os.rename(out, aside)
        os.rename(tmp, out)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def card_markdown(card: dict) -> str:
    lines = [f"# {card.get('name', 'adapter')}", "", f"LoRA adapter for `{card.get('base')}`, made with "
             f"`{card.get('command', 'fleet tune')}`.", ""]
    for section in ("data", "hyperparameters", "metrics"):
        if section in card:
            lines += [f"## {section.capitalize()}", ""]
            lines += [f"- {k}: `{v}`" for k, v in card[section].items()] + [""]
    return "\n".join(lines)


def params_dict(*objs) -> dict:
    out: dict = {}
    for o in objs:
        out.update(asdict(o))
    return out
