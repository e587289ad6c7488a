"""The engine against `transformers` on tiny random-weight models of each family (fp32)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import fleetlm.engine.engine as engine_mod
from fleetlm import LLM, SamplingParams


def hf_greedy(folder, prompt_ids: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy continuation and the logits at every position (full forward)."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False,
                             min_new_tokens=n, pad_token_id=0)
        full = out[0].tolist()
        logits = model(torch.tensor([full])).logits[0]
    return full[len(prompt_ids):], logits


def record_logits(monkeypatch) -> dict[str, list[torch.Tensor]]:
    """Capture the logits the engine samples from, per request id."""
    seen: dict[str, list[torch.Tensor]] = {}
    real = engine_mod.sample

    def spy(logits, seqs, gen):
        for row, seq in zip(logits, seqs):
            seen.setdefault(seq.request_id, []).append(row.float().cpu())  # the reference runs on CPU
        return real(logits, seqs, gen)

    monkeypatch.setattr(engine_mod, "sample", spy)
    return seen


def prompts_of(n: int, lengths, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[2] + torch.randint(3, 259, (length - 1,), generator=g).tolist() for length in lengths[:n]]


@pytest.mark.parametrize("backend", ["auto", "torch"])  # native CPU kernel / PyTorch SDPA decode
@pytest.mark.parametrize("budget", [512, 7])  # 7: prompts are chunked over several steps
def test_logits_and_greedy_match_transformers(tiny_family, monkeypatch, budget, backend):
    name, folder = tiny_family
    seen = record_logits(monkeypatch)
    llm = LLM(str(folder), dtype="float32", max_num_batched_tokens=budget, attention_backend=backend)
    assert_greedy_matches_transformers(llm, folder, prompts_of(3, [5, 23, 40]), 12, seen, name)


def assert_greedy_matches_transformers(llm, folder, prompts, n: int, seen, name: str) -> None:
    """`llm`'s greedy tokens equal transformers' and its logits (as `record_logits` saw them)
    are within 1e-3, for `n` tokens of each prompt."""
    outs = llm.generate(prompt_token_ids=prompts,
                        sampling_params=SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
    for prompt, out in zip(prompts, outs):
        ref_tokens, ref_logits = hf_greedy(folder, prompt, n)
        assert out.outputs[0].token_ids == ref_tokens, name
        ours = torch.stack(seen[out.request_id])  # (n, V): prefill's last position, then decodes
        ref = ref_logits[len(prompt) - 1 : len(prompt) - 1 + n]
        assert (ours - ref).abs().max().item() <= 1e-3, name


def test_same_output_alone_and_in_a_batch_of_16(tiny_family):
    _, folder = tiny_family
    llm = LLM(str(folder), dtype="float32", max_num_batched_tokens=64)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    prompts = prompts_of(16, [3 + 5 * i for i in range(16)], seed=1)
    batch = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    for i in (0, 7, 15):
        alone = llm.generate(prompt_token_ids=[prompts[i]], sampling_params=params)[0]
        assert alone.outputs[0].token_ids == batch[i].outputs[0].token_ids


def test_prefix_cache_hit_gives_same_output(tiny_gemma):
    llm = LLM(str(tiny_gemma), dtype="float32", block_size=4)
    shared = prompts_of(1, [30], seed=2)[0]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    first = llm.generate(prompt_token_ids=[shared + [10, 11]], sampling_params=params)[0]
    assert first.num_cached_tokens == 0
    second = llm.generate(prompt_token_ids=[shared + [10, 11]], sampling_params=params)[0]
    assert second.num_cached_tokens == 28  # 7 full blocks of 4 before the last token
    assert second.outputs[0].token_ids == first.outputs[0].token_ids
    off = LLM(str(tiny_gemma), dtype="float32", block_size=4, enable_prefix_caching=False)
    assert off.generate(prompt_token_ids=[shared + [10, 11]], sampling_params=params)[0].outputs[0].token_ids \
        == first.outputs[0].token_ids


def test_forced_preemption_gives_same_output(tiny_gemma):
    prompts = prompts_of(6, [20, 25, 30, 18, 22, 27], seed=3)
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    roomy = LLM(str(tiny_gemma), dtype="float32", block_size=4).generate(
        prompt_token_ids=prompts, sampling_params=params)
    tight = LLM(str(tiny_gemma), dtype="float32", block_size=4, num_kv_blocks=40,
                max_model_len=128)
    outs = tight.generate(prompt_token_ids=prompts, sampling_params=params)
    assert tight.engine.scheduler.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in roomy]
    assert tight.engine.kv.num_free_blocks == 40  # everything freed at the end
