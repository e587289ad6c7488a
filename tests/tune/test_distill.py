"""Prompt distillation on a tiny random Gemma 3: teacher distributions with the shared prefix
cached equal a full forward; training lowers held-out KL; the report is computed on the
engine with the adapter."""

from __future__ import annotations

import json
import random

import pytest
import torch

from fleetlm.tune.data import DataError
from fleetlm.tune.distill import DistillConfig, DistillItem, chat_ids, load_queries, run_distill, teacher_logprobs
from fleetlm.tune.trainer import LoopParams, LoraParams


def _queries(path, n, seed):
    rng = random.Random(seed)
    words = ["apple", "river", "stone", "cloud", "tiger", "lamp", "ocean", "maple"]
    path.write_text("".join(json.dumps({"query": f"{rng.choice(words)} {rng.choice(words)}"}) + "\n"
                            for _ in range(n)))
    return path


def test_prefix_cached_teacher_equals_full_forward(tiny_gemma):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gemma)
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma, dtype=torch.float32).eval()
    system = "You are a terse assistant. " * 3  # longer than the sliding window (8)
    items = [DistillItem(query=q, teacher_prompt=chat_ids(tok, system, q), student_prompt=chat_ids(tok, None, q),
                         answer=[70 + i, 71, 72, 1]) for i, q in enumerate(["hi", "hello there"])]
    got = list(teacher_logprobs(model, items, "fp32"))
    for it, logp in got:
        with torch.no_grad():
            full = model(torch.tensor([it.teacher_prompt + it.answer[:-1]])).logits[0]
        want = torch.log_softmax(full[len(it.teacher_prompt) - 1:], dim=-1)
        torch.testing.assert_close(logp, want, atol=1e-4, rtol=1e-4)


def test_queries_errors_name_the_line(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"query": "ok"}\n{"question": "no"}\n')
    with pytest.raises(DataError, match=r"q.jsonl:2: expected"):
        load_queries(p)


def test_distill_lowers_kl_and_reports(tiny_gemma, tmp_path):
    sp = tmp_path / "prompt.txt"
    sp.write_text("Always answer like a pirate and mention the sea. " * 4)
    cfg = DistillConfig(base=str(tiny_gemma), system_prompt=str(sp), queries=str(_queries(tmp_path / "q.jsonl", 40, 0)),
                        eval_queries=str(_queries(tmp_path / "e.jsonl", 6, 1)), out=str(tmp_path / "pirate"),
                        max_new_tokens=8, top_k=8, latency_queries=2, engine_dtype="float32",
                        lora=LoraParams(rank=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                          "gate_proj", "up_proj", "down_proj"]),
                        loop=LoopParams(lr=1e-2, epochs=4, batch_size=8, dtype="fp32", checkpoint_every=0))
    lines = []
    card = run_distill(cfg, log=lines.append)
    m = card["metrics"]
    assert m["held_out_topk_kl_after"] < 0.7 * m["held_out_topk_kl_before"]
    assert m["prompt_tokens_removed_per_call"] > 100
    assert 0 <= m["greedy_exact_match"] <= 1 and m["mean_token_kl"] >= 0
    assert m["cold_prompt_ttft_s"] > 0 and m["cold_distilled_ttft_s"] > 0
    saved = json.loads((tmp_path / "pirate" / "card.json").read_text())
    assert saved["metrics"]["greedy_exact_match"] == m["greedy_exact_match"]
    assert any("prompt tokens removed per call" in x for x in lines)


def test_text_format_prompts():
    from tests.tiny_models import byte_tokenizer

    from fleetlm.tune.distill import prompt_ids

    tok = byte_tokenizer()
    teacher = prompt_ids(tok, "RULES", "Q: hi\nA:", "text")
    student = prompt_ids(tok, None, "Q: hi\nA:", "text")
    assert tok.decode(teacher) == "<bos>RULES\n\nQ: hi\nA:" and tok.decode(student) == "<bos>Q: hi\nA:"
    with pytest.raises(ValueError, match="format"):
        DistillConfig(base="x", system_prompt="p", queries="q", out="o", format="xml")
