"""LoRA SFT on a tiny random Gemma 3: held-out loss falls, the saved adapter reloads with PEFT
and gives the training model's logits, and a resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import json
import random

import pytest
import torch

from fleetlm.tune.sft import SFTConfig, run_sft
from fleetlm.tune.trainer import LoopParams, LoraParams


def _data(path, n=48, seed=0):
    # a learnable mapping: "colour of <thing>?" -> a fixed word per thing
    rng = random.Random(seed)
    things = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red"}
    with open(path, "w") as f:
        for _ in range(n):
            k = rng.choice(sorted(things))
            f.write(json.dumps({"messages": [{"role": "user", "content": f"colour of {k}?"},
                                             {"role": "assistant", "content": things[k]}]}) + "\n")
    return path


def _cfg(tiny, tmp_path, out, **loop):
    return SFTConfig(base=str(tiny), data=str(_data(tmp_path / "train.jsonl")),
                     eval_data=str(_data(tmp_path / "eval.jsonl", n=10, seed=1)), out=str(tmp_path / out),
                     lora=LoraParams(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
                     loop=LoopParams(**{"lr": 1e-2, "epochs": 3, "batch_size": 8, "dtype": "fp32",
                                        "checkpoint_every": 3, **loop}))


def test_sft_lowers_eval_loss_and_adapter_reloads(tiny_gemma, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = run_sft(_cfg(tiny_gemma, tmp_path, "ad"))
    m = res.card["metrics"]
    assert m["eval_loss_after"] < 0.7 * m["eval_loss_before"]
    out = res.out
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    card = json.loads((out / "card.json").read_text())
    assert card["data"]["sha256"] and card["hyperparameters"]["rank"] == 4 and (out / "README.md").is_file()
    assert not list(tmp_path.glob(".ad.tmp-*"))  # the temporary folder was renamed away

    base = AutoModelForCausalLM.from_pretrained(tiny_gemma, dtype=torch.float32)
    ids = torch.tensor([[2, 70, 71, 72, 73, 74]])
    plain = base(ids).logits
    tuned = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        got = tuned(ids).logits
    # reference: the training-time loss, recomputed from the reloaded adapter, equals the card's
    from fleetlm.tune.sft import mean_loss, _tokenize_all
    from fleetlm.tune.data import load_chat_jsonl
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gemma)
    held = _tokenize_all(tok, load_chat_jsonl(tmp_path / "eval.jsonl"), 512)
    assert mean_loss(tuned, held, 0, 8) == pytest.approx(m["eval_loss_after"], abs=1e-3)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter changes the model


def test_resume_continues_to_the_same_adapter(tiny_gemma, tmp_path):
    from safetensors.torch import load_file

    full = run_sft(_cfg(tiny_gemma, tmp_path, "full"))
    part = run_sft(_cfg(tiny_gemma, tmp_path, "part", max_steps=4))
    assert part.out is None and part.card["metrics"]["steps"] == 4
    assert (tmp_path / "part.ckpt" / "step-000004.pt").is_file()
    cfg = _cfg(tiny_gemma, tmp_path, "part")
    cfg.resume = True
    rest = run_sft(cfg)
    assert rest.card["metrics"]["steps"] == full.card["metrics"]["steps"]
    a = load_file(full.out / "adapter_model.safetensors")
    b = load_file(rest.out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert rest.card["metrics"]["eval_loss_before"] == full.card["metrics"]["eval_loss_before"]


def test_resume_refuses_other_hyperparameters(tiny_gemma, tmp_path):
    run_sft(_cfg(tiny_gemma, tmp_path, "x", max_steps=3))
    cfg = _cfg(tiny_gemma, tmp_path, "x", lr=1e-3)
    cfg.resume = True
    with pytest.raises(ValueError, match="refusing to resume"):
        run_sft(cfg)


def test_init_adapter_starts_where_the_first_stage_ended(tiny_gemma, tmp_path):
    """A second stage from --init-adapter starts at the first stage's held-out loss (same data),
    not at the base model's, records where it started, and refuses a LoRA of another shape."""
    first = run_sft(_cfg(tiny_gemma, tmp_path, "stage1"))
    cfg = _cfg(tiny_gemma, tmp_path, "stage2", epochs=1)
    cfg.init_adapter = str(first.out)
    second = run_sft(cfg)
    m1, m2 = first.card["metrics"], second.card["metrics"]
    assert m2["eval_loss_before"] == pytest.approx(m1["eval_loss_after"], abs=1e-4)
    assert m2["eval_loss_before"] < 0.7 * m1["eval_loss_before"]
    assert second.card["init_adapter"]["path"] == str(first.out)
    assert second.card["init_adapter"]["data"]["sha256"] == first.card["data"]["sha256"]

    wrong = _cfg(tiny_gemma, tmp_path, "stage2b")
    wrong.init_adapter, wrong.lora.rank = str(first.out), 8
    with pytest.raises(ValueError, match="rank 4 \\(given 8\\)"):
        run_sft(wrong)
    wrong.init_adapter = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no adapter_config.json"):
        run_sft(wrong)
    assert not (tmp_path / "stage2b").exists()


def test_train_dtype_auto_follows_the_hardware(monkeypatch):
    """--dtype auto picks bf16 only where it is native; explicit choices pass; others are refused."""
    import fleetlm.engine.loader as loader
    from fleetlm.tune.base import resolve_train_dtype

    assert resolve_train_dtype("fp32") == "fp32" and resolve_train_dtype("bf16") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loader, "cpu_has_fast_bf16", lambda: False)
    assert resolve_train_dtype("auto") == "fp32"
    monkeypatch.setattr(loader, "cpu_has_fast_bf16", lambda: True)
    assert resolve_train_dtype("auto") == "bf16"
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_train_dtype("fp16")


def test_loop_params_resolve_auto_dtype():
    from fleetlm.tune.base import resolve_train_dtype

    assert LoopParams().dtype == resolve_train_dtype("auto") in ("bf16", "fp32")
    assert LoopParams(dtype="fp32").dtype == "fp32"
    with pytest.raises(ValueError, match="dtype must be"):
        LoopParams(dtype="float8")
