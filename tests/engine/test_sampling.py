"""The sampler: seeded reproducibility in any batch, top-k / top-p / min-p filtering against
reference implementations, the drawn distribution against softmax, penalties against
`transformers`, and logprobs against transformers' logits on the tiny model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from fleetlm import LLM, SamplingParams
from fleetlm.engine.sampling import BLOCK, CANDIDATES, _filtered_candidates, apply_penalties, draw, sample
from fleetlm.engine.sequence import Sequence


@pytest.fixture(scope="module")
def llm(tiny_gemma):
    return LLM(str(tiny_gemma), dtype="float32")


@pytest.fixture(scope="module")
def hf_model(tiny_gemma):
    return AutoModelForCausalLM.from_pretrained(tiny_gemma, dtype=torch.float32).eval()


def random_prompts(n: int, seed: int, lo: int = 3, hi: int = 30) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [[2] + torch.randint(3, 259, (k - 1,), generator=g).tolist() for k in lengths]


def fake_seq(params: SamplingParams, token_ids=(0,), prompt_len: int | None = None,
             generator: torch.Generator | None = None, seq_id: int = 0) -> Sequence:
    ids = list(token_ids)
    return Sequence(seq_id, f"r{seq_id}", 0, ids, len(ids) if prompt_len is None else prompt_len,
                    params, generator=generator)


def tokens_of(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


# ---- seeded sampling through the engine ------------------------------------------------

SPREAD = dict(temperature=1.0, top_p=0.9, top_k=50, max_tokens=12, ignore_eos=True)


@pytest.mark.parametrize("spread", [SPREAD, dict(temperature=1.0, max_tokens=12, ignore_eos=True)],
                         ids=["top-k-top-p", "temperature-only"])
def test_same_seed_same_tokens_alone_and_in_a_random_batch(llm, spread):
    """Filtered rows draw one by one; temperature-only rows draw together: in both a seeded
    row's text does not depend on its neighbours."""
    prompt = random_prompts(1, seed=10)[0]
    params = SamplingParams(seed=1234, **spread)
    alone = tokens_of(llm.generate(prompt_token_ids=[prompt], sampling_params=params))[0]
    assert tokens_of(llm.generate(prompt_token_ids=[prompt], sampling_params=params))[0] == alone
    others = random_prompts(10, seed=11)
    g = torch.Generator().manual_seed(12)
    other_params = [SamplingParams(**{**spread, "max_tokens": int(torch.randint(1, 20, (1,), generator=g))},
                                   seed=None if i % 2 else 100 + i) for i in range(10)]
    prompts = others[:4] + [prompt] + others[4:]
    plist = other_params[:4] + [params] + other_params[4:]
    batch = tokens_of(llm.generate(prompt_token_ids=prompts, sampling_params=plist))
    assert batch[4] == alone
    assert len(set(map(tuple, batch))) > 5  # the neighbours really sampled different things


def test_different_seeds_give_different_tokens(llm):
    prompt = random_prompts(1, seed=20)[0]
    outs = [tokens_of(llm.generate(prompt_token_ids=[prompt],
                                   sampling_params=SamplingParams(seed=s, **SPREAD)))[0] for s in range(4)]
    assert len(set(map(tuple, outs))) == 4


def test_top_k_1_is_greedy(llm):
    prompts = random_prompts(3, seed=30)
    greedy = llm.generate(prompt_token_ids=prompts,
                          sampling_params=SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    top1 = llm.generate(prompt_token_ids=prompts,
                        sampling_params=SamplingParams(temperature=1.5, top_k=1, max_tokens=10, ignore_eos=True))
    assert tokens_of(top1) == tokens_of(greedy)


def test_top_k_keeps_samples_within_the_raw_top_k(llm):
    prompts = random_prompts(2, seed=40)
    hot = dict(temperature=3.0, logprobs=5, max_tokens=24, ignore_eos=True, seed=5)
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=SamplingParams(top_k=5, **hot))
    ranks = [lp.rank for o in outs for lp in o.outputs[0].logprobs]
    for o in outs:
        for tok, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs):
            assert lp.token_id == tok and tok in [t for t, _ in lp.top]
    assert max(ranks) <= 5 and len(set(ranks)) > 2  # spread over the top 5, not only rank 1
    free = llm.generate(prompt_token_ids=prompts, sampling_params=SamplingParams(**hot))
    assert max(lp.rank for o in free for lp in o.outputs[0].logprobs) > 5  # without top_k it would


# ---- filtering against a reference -----------------------------------------------------

def ref_keep(probs: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> set[int]:
    """One filter at a time, the textbook way, in float64."""
    p = probs.double()
    order = p.argsort(descending=True)
    keep = set(order.tolist())
    if top_k:
        keep &= set(order[:top_k].tolist())
    if top_p < 1.0:
        sorted_p = p[order]
        before = sorted_p.cumsum(0) - sorted_p
        keep &= set(order[before < top_p].tolist())
    if min_p > 0:
        keep &= set(torch.nonzero(p >= min_p * p.max()).flatten().tolist())
    return keep


def prob_vectors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "peaked-300": torch.softmax(torch.randn(300, generator=g) * 3, 0),
        "peaked-5000": torch.softmax(torch.randn(5000, generator=g) * 3, 0),
        "flat-5000": torch.softmax(torch.randn(5000, generator=g) * 0.01, 0),
    }


def check_candidates(probs, vals, idx, expected: set[int], top_p: float | None = None):
    assert torch.equal(vals, probs[idx])
    assert bool((vals[:-1] >= vals[1:]).all()) and int(idx[0]) == int(probs.argmax())
    got = set(idx.tolist())
    assert len(got) == len(idx)
    diff = got ^ expected
    if top_p is None:
        assert not diff
    else:  # float32 vs float64 cumsum: only a token sitting on the threshold may differ
        p = probs.double()
        for t in diff:
            assert abs(float(p[p > p[t]].sum()) - top_p) < 1e-5
        assert len(diff) <= 1


@pytest.mark.parametrize("name", ["peaked-300", "peaked-5000", "flat-5000"])
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
def test_top_p_matches_reference(name, top_p):
    probs = prob_vectors()[name]
    vals, idx = _filtered_candidates(probs, 0, top_p, 0.0)
    check_candidates(probs, vals, idx, ref_keep(probs, top_p=top_p), top_p=top_p)
    if name == "flat-5000":
        assert len(idx) > CANDIDATES  # the nucleus is wider than the candidates: full sort


@pytest.mark.parametrize("name", ["peaked-300", "peaked-5000"])
@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5])
def test_min_p_matches_reference(name, min_p):
    probs = prob_vectors()[name]
    vals, idx = _filtered_candidates(probs, 0, 1.0, min_p)
    check_candidates(probs, vals, idx, ref_keep(probs, min_p=min_p))


def test_min_p_on_a_flat_distribution_keeps_every_token_above_the_threshold():
    probs = prob_vectors()["flat-5000"]
    vals, idx = _filtered_candidates(probs, 0, 1.0, 0.5)
    assert len(idx) == len(probs)
    check_candidates(probs, vals, idx, ref_keep(probs, min_p=0.5))  # all 5000 pass


@pytest.mark.parametrize("name", ["peaked-300", "flat-5000"])
@pytest.mark.parametrize("top_k", [1, 7, 2000])
def test_top_k_matches_reference(name, top_k):
    probs = prob_vectors()[name]
    vals, idx = _filtered_candidates(probs, top_k, 1.0, 0.0)
    check_candidates(probs, vals, idx, ref_keep(probs, top_k=top_k))
    assert len(idx) == min(top_k, len(probs))


@pytest.mark.parametrize("name", ["peaked-300", "flat-5000"])
def test_top_k_then_top_p_matches_transformers(name):
    probs = prob_vectors()[name]
    top_k, top_p = (5, 0.9) if name == "peaked-300" else (100, 0.5)
    scores = TopPLogitsWarper(top_p)(None, TopKLogitsWarper(top_k)(None, probs.log()[None].clone()))
    expected = set(torch.nonzero(scores[0] > -float("inf")).flatten().tolist())
    vals, idx = _filtered_candidates(probs, top_k, top_p, 0.0)
    assert set(idx.tolist()) == expected


# ---- the drawn distribution ------------------------------------------------------------

LOGITS8 = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0])


@pytest.mark.parametrize("kw, seeded", [
    (dict(temperature=1.0), False),
    (dict(temperature=1.0), True),
    (dict(temperature=0.7, top_k=3), True),
    (dict(temperature=1.0, top_p=0.8), False),
    (dict(temperature=2.0, min_p=0.3), True),
])
def test_draws_follow_the_filtered_softmax(kw, seeded):
    n = 4000
    params = SamplingParams(**kw)
    seqs = [fake_seq(params, seq_id=i,
                     generator=torch.Generator().manual_seed(i) if seeded else None) for i in range(n)]
    tokens, entries = sample(LOGITS8.expand(n, -1).clone(), seqs, torch.Generator().manual_seed(0))
    assert entries == [None] * n
    probs = torch.softmax(LOGITS8.double() / params.temperature, 0)
    keep = sorted(ref_keep(probs, top_k=params.top_k, top_p=params.top_p, min_p=params.min_p))
    expected = torch.zeros_like(probs)
    expected[keep] = probs[keep] / probs[keep].sum()
    counts = torch.bincount(torch.tensor(tokens), minlength=8).double()
    assert counts[expected == 0].sum() == 0  # nothing outside the kept set
    exp_counts = expected[keep] * n
    chi2 = float(((counts[keep] - exp_counts) ** 2 / exp_counts).sum())
    assert chi2 < 30, (chi2, counts.tolist(), exp_counts.tolist())  # dof <= 7; p ~ 1e-4


@pytest.mark.parametrize("vocab", [7, BLOCK, 3 * BLOCK + 5])
def test_draw_is_the_inverse_cdf_and_skips_zero_entries(vocab):
    """`draw` against a whole-row fp64 cumulative sum, on rows with zeroed entries, unnormalised
    mass and a vocabulary that is not a multiple of the block; u at 0 and just under 1 land
    on the first and last non-zero entries."""
    g = torch.Generator().manual_seed(vocab)
    probs = torch.rand(64, vocab, generator=g) ** 4 * 3.0  # unnormalised, with a long tail
    probs[torch.rand(64, vocab, generator=g) < 0.3] = 0.0
    probs[:, 0] = 0.0
    probs[:, -1] = 0.0
    probs[:, vocab // 2] += 1e-3  # every row keeps some mass
    u = torch.rand(64, generator=g, dtype=torch.float64)
    u[0], u[1] = 0.0, 1.0 - 2.0 ** -53
    cdf = probs.double().cumsum(1)
    want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    got = draw(probs, u)
    assert got.tolist() == want.tolist()
    nonzero = [torch.nonzero(r)[:, 0] for r in probs[:2]]
    assert int(got[0]) == int(nonzero[0][0]) and int(got[1]) == int(nonzero[1][-1])
    assert bool((probs.gather(1, got[:, None]) > 0).all())


def test_draw_reaches_the_tail_of_a_wide_row():
    """In a 262k-wide row whose best token holds all but 1% of the mass, the tail's tokens
    (each ~4e-8, under half of fp32's resolution near 1) are drawn at their rate."""
    vocab = 262_144
    probs = torch.full((1, vocab), 1e-2 / (vocab - 1))
    probs[0, 0] = 1.0 - 1e-2
    g = torch.Generator().manual_seed(3)
    u = torch.rand(2_000, generator=g, dtype=torch.float64)
    hits = sum(int(draw(probs, u[i : i + 1])) != 0 for i in range(len(u)))
    assert 5 <= hits <= 40, hits  # expected 20 (Poisson, p ~ 1e-4 outside)


def test_greedy_rows_take_the_argmax_in_a_mixed_batch():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 50, generator=g)
    seqs = [fake_seq(SamplingParams(temperature=0.0 if i % 2 else 1.0), seq_id=i) for i in range(6)]
    tokens, _ = sample(logits, seqs, g)
    for i in (1, 3, 5):
        assert tokens[i] == int(logits[i].argmax())


# ---- penalties -------------------------------------------------------------------------

@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_transformers(penalty):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 40, generator=g) * 3
    histories = [[1, 5, 5, 9, 30], [2, 2, 2], [0, 39, 17, 17, 8, 1]]
    seqs = [fake_seq(SamplingParams(repetition_penalty=penalty), token_ids=h, prompt_len=2, seq_id=i)
            for i, h in enumerate(histories)]
    ours = logits.clone()
    apply_penalties(ours, seqs)
    proc = RepetitionPenaltyLogitsProcessor(penalty)
    for i, h in enumerate(histories):
        ref = proc(torch.tensor([h]), logits[i : i + 1].clone())[0]
        torch.testing.assert_close(ours[i], ref)
    assert not torch.equal(ours, logits)


def test_presence_and_frequency_penalties_count_output_tokens_only():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 30, generator=g)
    prompt = [4, 4, 7]
    output = [7, 9, 9, 9, 12]
    params = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25),
              SamplingParams(presence_penalty=-1.0, frequency_penalty=1.5)]
    seqs = [fake_seq(p, token_ids=prompt + output, prompt_len=3, seq_id=i) for i, p in enumerate(params)]
    ours = logits.clone()
    apply_penalties(ours, seqs)
    for i, p in enumerate(params):
        ref = logits[i].clone()
        for tok in set(output):
            ref[tok] -= p.frequency_penalty * output.count(tok) + p.presence_penalty
        torch.testing.assert_close(ours[i], ref)  # token 4 (prompt only) is untouched


def test_greedy_with_repetition_penalty_matches_transformers_generate(llm, hf_model):
    prompt = random_prompts(1, seed=50, lo=10, hi=11)[0]
    params = SamplingParams(temperature=0, repetition_penalty=1.5, max_tokens=12, ignore_eos=True)
    ours = tokens_of(llm.generate(prompt_token_ids=[prompt], sampling_params=params))[0]
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12,
                                do_sample=False, repetition_penalty=1.5, pad_token_id=0)[0, len(prompt):]
    assert ours == ref.tolist()
    plain = tokens_of(llm.generate(prompt_token_ids=[prompt],
                                   sampling_params=SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)))[0]
    assert plain != ours  # the penalty changed the continuation


# ---- logprobs --------------------------------------------------------------------------

def hf_logprobs(hf_model, prompt: list[int], output: list[int]) -> torch.Tensor:
    """log_softmax of transformers' raw logits at each generated position: (len(output), V)."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([prompt + output])).logits[0]
    return torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(output)].double(), -1)


@pytest.mark.parametrize("kw", [
    dict(temperature=0, logprobs=5),
    dict(temperature=1.5, seed=7, logprobs=3, repetition_penalty=1.4, frequency_penalty=0.5),
    dict(temperature=1.0, seed=8, logprobs=0),
])
def test_logprobs_are_raw_log_softmax(llm, hf_model, kw):
    prompt = random_prompts(1, seed=60, lo=12, hi=13)[0]
    out = llm.generate(prompt_token_ids=[prompt],
                       sampling_params=SamplingParams(max_tokens=10, ignore_eos=True, **kw))[0].outputs[0]
    ref = hf_logprobs(hf_model, prompt, out.token_ids)
    k = kw["logprobs"]
    assert len(out.logprobs) == len(out.token_ids) == 10
    for row, tok, lp in zip(ref, out.token_ids, out.logprobs):
        assert lp.token_id == tok
        assert abs(lp.logprob - float(row[tok])) < 1e-4
        assert len(lp.top) == k
        top_vals = [v for _, v in lp.top]
        assert top_vals == sorted(top_vals, reverse=True)
        torch.testing.assert_close(torch.tensor(top_vals, dtype=torch.double), row.topk(k).values,
                                   atol=1e-4, rtol=0)
        for t, v in lp.top:
            assert abs(v - float(row[t])) < 1e-4
        # rank: 1 + the number of tokens more likely than the sampled one (ties within 1e-4 aside)
        assert int((row > row[tok] + 1e-4).sum()) + 1 <= lp.rank <= int((row > row[tok] - 1e-4).sum()) + 1
        if kw["temperature"] == 0:
            assert lp.rank == 1 and lp.top[0][0] == tok
        elif lp.rank <= k:
            assert lp.top[lp.rank - 1][0] == tok
    if kw["temperature"]:
        assert max(lp.rank for lp in out.logprobs) > 1  # really sampled, not argmax


def test_no_logprobs_unless_asked(llm):
    out = llm.generate(prompt_token_ids=random_prompts(1, seed=70),
                       sampling_params=SamplingParams(max_tokens=3, temperature=0))[0].outputs[0]
    assert out.logprobs is None


@pytest.mark.parametrize("kw", [dict(repetition_penalty=5e-324), dict(temperature=1e-300),
                                dict(temperature=1e-300, repetition_penalty=10.0, top_p=0.5)])
def test_extreme_allowed_values_never_sample_a_forbidden_token(kw):
    """-inf logits stand for tokens a grammar forbids. A penalty that pushes the allowed ones
    to +inf, or a temperature that is 0 in fp32, must not turn the softmax into NaN (whose
    argmax is token 0, a forbidden one)."""
    logits = torch.full((4, 8), float("-inf"))
    logits[:, 3], logits[:, 5], logits[:, 6] = 2.0, 2.5, -1.0
    seqs = [fake_seq(SamplingParams(**kw), token_ids=[3, 5, 6], seq_id=i,
                     generator=torch.Generator().manual_seed(i)) for i in range(4)]
    tokens, _ = sample(logits, seqs, torch.Generator().manual_seed(0))
    assert set(tokens) <= {3, 5, 6}, tokens
