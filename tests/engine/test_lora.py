"""Multi-LoRA against transformers + PEFT on tiny random models (fp32)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from fleetlm import LLM, SamplingParams
from fleetlm.engine.errors import InvalidRequestError
from fleetlm.engine.lora import LoRAError, LoRANotFoundError, LoRARequest

GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base, out, *, seed: int, rank: int = 8, targets=("q_proj", "v_proj"), alpha: int = 16,
                 **extra):
    """A PEFT LoRA adapter with random, non-zero A and B (PEFT's default zero B would be a no-op)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, **extra)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    peft_model.save_pretrained(out)
    return LoRARequest(out.name, str(out))


def merged_greedy(base, adapter: LoRARequest, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter.path).merge_and_unload().eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)[0].tolist()
        logits = model(torch.tensor([out])).logits[0]
    return out[len(prompt):], logits[len(prompt) - 1 : len(prompt) - 1 + n]


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[2] + torch.randint(3, 259, (5 + 4 * i,), generator=g).tolist() for i in range(n)]


@pytest.mark.parametrize("budget,path", [(512, "kernel"), (7, "kernel"), (512, "torch")])  # 7: chunked prefill
def test_adapter_matches_transformers_peft_merged(tiny_family, tmp_path, monkeypatch, budget, path):
    from tests.engine.test_correctness import record_logits

    name, base = tiny_family
    adapter = make_adapter(base, tmp_path / "all", seed=1, rank=8, targets=ALL)
    seen = record_logits(monkeypatch)
    llm = LLM(str(base), dtype="float32", enable_lora=True, max_num_batched_tokens=budget)
    use_path(llm, path)
    ps = prompts(2)
    outs = llm.generate(prompt_token_ids=ps, sampling_params=GREEDY, lora_request=adapter)
    base_out = llm.generate(prompt_token_ids=ps[:1], sampling_params=GREEDY)[0]
    for p, out in zip(ps, outs):
        ref_tokens, ref_logits = merged_greedy(base, adapter, p, 10)
        assert out.outputs[0].token_ids == ref_tokens, name
        assert (torch.stack(seen[out.request_id]) - ref_logits).abs().max().item() <= 1e-3, name
    assert base_out.outputs[0].token_ids != outs[0].outputs[0].token_ids  # the adapter matters


def use_path(llm, path: str) -> None:
    """"kernel": the native CPU op (it must have built); "torch": the fallback ops."""
    pool = llm.engine.lora_pool
    if path == "kernel" and llm.engine.loaded.device.type != "cpu":
        pytest.skip("the multi-LoRA kernel is a CPU op; other devices use the torch ops")
    if path == "kernel":
        assert pool.kernel is not None, "the multi-LoRA kernel did not build"
    else:
        pool.kernel = None


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_mixed_batch_of_base_and_8_adapters_equals_each_alone(tiny_gemma, tmp_path, path):
    shapes = [(4, ("q_proj", "v_proj")), (8, ALL), (16, ("o_proj", "down_proj")), (2, ("gate_proj", "k_proj"))]
    adapters = [make_adapter(tiny_gemma, tmp_path / f"a{i}", seed=10 + i, rank=shapes[i % 4][0],
                             targets=shapes[i % 4][1]) for i in range(8)]
    loras = [None, *adapters, None, adapters[0], adapters[5]]  # base rows and repeats mixed in
    ps = prompts(len(loras), seed=3)
    # max_loras=4 < 8 adapters: sequences wait for a slot and slots are recycled (LRU)
    llm = LLM(str(tiny_gemma), dtype="float32", enable_lora=True, max_loras=4, max_num_batched_tokens=64)
    use_path(llm, path)
    batch = llm.generate(prompt_token_ids=ps, sampling_params=GREEDY, lora_request=loras)
    fresh = LLM(str(tiny_gemma), dtype="float32", enable_lora=True, max_loras=1)
    for p, lora, out in zip(ps, loras, batch):
        alone = fresh.generate(prompt_token_ids=[p], sampling_params=GREEDY, lora_request=lora)[0]
        assert alone.outputs[0].token_ids == out.outputs[0].token_ids
    assert len({tuple(o.outputs[0].token_ids) for o in batch}) >= 8  # adapters really differ
    assert all(r == 0 for r in llm.engine.lora_pool.refs)  # every slot released


def test_prefix_cache_is_per_adapter(tiny_gemma, tmp_path):
    a = make_adapter(tiny_gemma, tmp_path / "a", seed=1)
    llm = LLM(str(tiny_gemma), dtype="float32", enable_lora=True, block_size=4)
    p = prompts(1, seed=4)[0] + list(range(40, 60))
    base = llm.generate(prompt_token_ids=[p], sampling_params=GREEDY)[0]
    first = llm.generate(prompt_token_ids=[p], sampling_params=GREEDY, lora_request=a)[0]
    second = llm.generate(prompt_token_ids=[p], sampling_params=GREEDY, lora_request=a)[0]
    assert first.num_cached_tokens == 0  # the base model's KV is not the adapter's
    assert second.num_cached_tokens > 0
    assert second.outputs[0].token_ids == first.outputs[0].token_ids != base.outputs[0].token_ids


def test_bad_adapters_are_refused_before_queueing(tiny_gemma, tiny_family, tmp_path):
    llm = LLM(str(tiny_gemma), dtype="float32", enable_lora=True, max_lora_rank=8)
    with pytest.raises(LoRANotFoundError):
        llm.generate(prompt_token_ids=[[2, 3]], lora_request=LoRARequest("x", str(tmp_path / "missing")))
    big = make_adapter(tiny_gemma, tmp_path / "big", seed=1, rank=16)
    with pytest.raises(LoRAError, match="rank 16 > max_lora_rank 8"):
        llm.generate(prompt_token_ids=[[2, 3]], lora_request=big)
    corrupt = make_adapter(tiny_gemma, tmp_path / "corrupt", seed=1)
    (tmp_path / "corrupt" / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(LoRAError, match="unreadable"):
        llm.generate(prompt_token_ids=[[2, 3]], lora_request=corrupt)
    dora = make_adapter(tiny_gemma, tmp_path / "dora", seed=1)
    cfg = json.loads((tmp_path / "dora" / "adapter_config.json").read_text())
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(LoRAError, match="DoRA"):
        llm.generate(prompt_token_ids=[[2, 3]], lora_request=dora)
    head = make_adapter(tiny_gemma, tmp_path / "head", seed=1, targets=("lm_head",))
    with pytest.raises(LoRAError, match="q/k/v/o/gate/up/down"):
        llm.generate(prompt_token_ids=[[2, 3]], lora_request=head)
    assert not llm.engine.has_unfinished_requests()
    ok = make_adapter(tiny_gemma, tmp_path / "ok", seed=2)
    assert llm.generate(prompt_token_ids=[[2, 3]], sampling_params=GREEDY, lora_request=ok)[0].finished
    plain = LLM(str(tiny_gemma), dtype="float32")
    with pytest.raises(InvalidRequestError, match="without LoRA support"):
        plain.generate(prompt_token_ids=[[2, 3]], lora_request=ok)
