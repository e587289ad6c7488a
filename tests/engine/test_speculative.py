"""Speculative decoding (n-gram drafts): lossless against the plain engine on tiny models of
each family, and the verification rule keeps the sampling distribution."""

from __future__ import annotations

import pytest
import torch

from fleetlm import LLM, SamplingParams
from fleetlm.config import EngineConfig
from fleetlm.engine.sampling import sample
from fleetlm.engine.sequence import Sequence
from fleetlm.engine.speculative import NgramProposer, verify
from fleetlm.engine.structured import StructuredOutput
from tests.engine.test_lora import make_adapter


def copy_prompts(seed: int = 0) -> list[list[int]]:
    """Prompts with repeated spans, so that n-gram drafts exist, and one without."""
    g = torch.Generator().manual_seed(seed)
    span = torch.randint(3, 259, (12,), generator=g).tolist()
    other = torch.randint(3, 259, (30,), generator=g).tolist()
    return [[2] + span * 3, [2] + other[:9] + span + other[9:] + span[:4], [2] + other]


def run(folder, prompts, params, *, one_by_one=False, lora=None, **kwargs):
    llm = LLM(str(folder), dtype="float32", **kwargs)
    if one_by_one:
        outs = [llm.generate(prompt_token_ids=[p], sampling_params=params, lora_request=lora)[0] for p in prompts]
    else:
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params, lora_request=lora)
    return [o.outputs[0].token_ids for o in outs], llm.engine.scheduler.proposer


GREEDY = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("budget", [512, 7])  # 7: prompts chunked over several steps
def test_greedy_identical_with_and_without_speculation(tiny_family, budget):
    name, folder = tiny_family
    prompts = copy_prompts()
    plain, _ = run(folder, prompts, GREEDY, max_num_batched_tokens=budget)
    spec, proposer = run(folder, prompts, GREEDY, max_num_batched_tokens=budget, speculative="ngram",
                         num_draft_tokens=5)
    assert spec == plain, name
    assert proposer.accepted > 20, (name, proposer.accepted)  # drafts were really verified and kept


def test_greedy_identical_with_prefix_hits_preemption_and_siblings(tiny_gemma):
    prompts = copy_prompts(1)
    prompts = prompts + prompts  # the second copy hits the prefix cache
    params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True, n=2)
    # 40 blocks of 8 tokens cannot hold twelve ~90-token sequences at once: some are preempted
    kw = dict(block_size=8, num_kv_blocks=40, max_num_batched_tokens=64, max_model_len=256)
    plain, _ = run(tiny_gemma, prompts, params, **kw)
    llm = LLM(str(tiny_gemma), dtype="float32", speculative="ngram", speculative_max_batch=64, **kw)
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert [o.outputs[0].token_ids for o in outs] == plain
    assert all(o.outputs[1].token_ids == o.outputs[0].token_ids for o in outs)  # greedy siblings
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.scheduler.proposer.accepted > 0
    assert outs[3].num_cached_tokens > 0


def test_greedy_identical_with_an_adapter(tiny_gemma, tmp_path):
    lora = make_adapter(tiny_gemma, tmp_path / "a", seed=5)
    prompts = copy_prompts(2)
    plain, _ = run(tiny_gemma, prompts, GREEDY, lora=lora, enable_lora=True)
    spec, proposer = run(tiny_gemma, prompts, GREEDY, lora=lora, enable_lora=True, speculative="ngram")
    base, _ = run(tiny_gemma, prompts, GREEDY)
    assert spec == plain and plain != base
    assert proposer.accepted > 0


def test_grammar_rows_identical_and_drafts_stay_in_the_grammar(tiny_family):
    name, folder = tiny_family
    spec = StructuredOutput("regex", r"(ab[0-9]{2}cd;){3,8}")
    params = SamplingParams(max_tokens=60, temperature=0, structured=spec)
    prompts = copy_prompts(3)
    plain, _ = run(folder, prompts, params)
    with_spec, proposer = run(folder, prompts, params, speculative="ngram", one_by_one=True)
    assert with_spec == plain, name
    assert proposer.accepted > 0  # forced tokens ("ab", "cd;") are drafts that cannot miss


def test_seeded_sampling_identical_and_logprobs_kept(tiny_family):
    name, folder = tiny_family
    params = SamplingParams(max_tokens=30, temperature=0.3, top_k=4, seed=11, ignore_eos=True, logprobs=2)
    prompts = copy_prompts(4)
    llm_plain = LLM(str(folder), dtype="float32")
    llm_spec = LLM(str(folder), dtype="float32", speculative="ngram")
    for p in prompts:
        a = llm_plain.generate(prompt_token_ids=[p], sampling_params=params)[0].outputs[0]
        b = llm_spec.generate(prompt_token_ids=[p], sampling_params=params)[0].outputs[0]
        assert a.token_ids == b.token_ids, name  # one draw per emitted token, as without drafts
        assert [round(x.logprob, 4) for x in a.logprobs] == [round(x.logprob, 4) for x in b.logprobs]
    assert llm_spec.engine.scheduler.proposer.accepted > 0


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_verification_keeps_the_sampling_distribution():
    """Draft [a, b] over three positions with known distributions: the first token must follow
    p0 and, after an accepted draft, the next must follow p1 (chi-square, 4 categories each)."""
    vocab = 4
    p = torch.tensor([[0.5, 0.2, 0.2, 0.1], [0.1, 0.6, 0.1, 0.2], [0.25, 0.25, 0.25, 0.25]])
    logits = p.log()
    draft = [0, 1]
    gen = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=1.0, max_tokens=100)
    first, second = torch.zeros(vocab), torch.zeros(vocab)
    trials = 20000
    for _ in range(trials):
        seq = Sequence(0, "r", 0, [2, 3], 2, params)
        seq.draft_ids = list(draft)
        taken: list[int] = []

        def take(s, tok, lp, taken=taken):
            taken.append(tok)

        accepted = verify(seq, logits, lambda row, s: (sample(row, [s], gen)[0][0], None), take)
        assert len(taken) == accepted + 1 and taken[:accepted] == draft[:accepted]
        first[taken[0]] += 1
        if accepted >= 1:
            second[taken[1]] += 1
    # 3 degrees of freedom: the 0.999 quantile is 16.27
    assert _chi_square(first, p[0]) < 16.27, first / trials
    assert _chi_square(second, p[1]) < 16.27, second / second.sum()
    assert abs(first[0] / trials - 0.5) < 0.02  # the draft is accepted with probability p0(a)


def test_proposer_takes_the_longest_most_recent_match_and_backs_off():
    prop = NgramProposer(4, max_batch=4)
    params = SamplingParams(max_tokens=100)
    seq = Sequence(0, "r", 0, [9, 1, 2, 3, 4, 5, 7, 1, 2, 3, 6, 8, 2, 3], 14, params)
    # [2, 3] occurs at 2 and 8 (most recent: 8 -> 6, 8); [1, 2, 3] is not the suffix
    assert prop.propose(seq, 10) == [6, 8]  # drafts start at 2 tokens ...
    prop.feedback(seq, 2, 2)
    assert prop.propose(seq, 10) == [6, 8, 2, 3]  # ... and double while accepted in full
    assert prop.propose(seq, 1) == [6]
    seq.token_ids += [5]  # suffix [3, 5] never seen before, [2, 3, 5]: no match
    assert prop.propose(seq, 4) == []
    prop.feedback(seq, 4, 0)
    prop.feedback(seq, 1, 0)  # a second miss in a row: pause
    seq.token_ids = seq.token_ids[:-1]
    assert prop.propose(seq, 4) == []
    assert seq.draft_state.cooldown > 0


@pytest.mark.parametrize("kwargs", [dict(speculative="eagle"), dict(speculative="ngram", num_draft_tokens=0),
                                    dict(speculative="ngram", num_draft_tokens=17),
                                    dict(speculative="ngram", speculative_max_batch=0)])
def test_bad_speculative_options_are_clear_errors(kwargs):
    with pytest.raises(ValueError, match="EngineConfig.(speculative|num_draft_tokens)"):
        EngineConfig(**kwargs)
