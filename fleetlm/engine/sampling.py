"""The sampler: per-row parameters applied to a batch of fp32 logits.

Order (as vLLM): raw logprobs (if asked) -> penalties -> greedy argmax, or temperature ->
min_p / top_k / top_p -> one draw. Draws use the exponential race (argmax p / E, E ~ Exp(1)),
which samples exactly from p; a seeded sequence draws E from its own generator over a
batch-independent candidate set, so its text does not depend on its batch neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fleetlm.engine.sequence import Sequence

# top_k / top_p / min_p look at this many best tokens first; a row whose nucleus is wider
# (a very flat distribution) falls back to the whole vocabulary, so the result is exact.
CANDIDATES = 1024


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    rank: int  # 1 = the most likely token
    top: list[tuple[int, float]]  # (token id, logprob), best first; length = requested k


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """In place, on fp32 logits (N, V) of seqs (N); rows without penalties are untouched.
    Repetition (HF/CTRL) over prompt + output; presence/frequency (OpenAI) over the output."""
    vocab = logits.shape[1]
    for i, seq in enumerate(seqs):
        p = seq.params
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(seq.token_ids, dtype=torch.long, device=logits.device).unique()
            vals = logits[i, seen]
            logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and seq.num_output_tokens:
            out = torch.tensor(seq.output_ids, dtype=torch.long, device=logits.device)
            counts = torch.bincount(out, minlength=vocab)[:vocab].to(logits.dtype)
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)


def _filtered_candidates(probs: torch.Tensor, top_k: int, top_p: float, min_p: float):
    """probs (V,) -> (candidate probs, candidate token ids) after top_k, then top_p over the
    top-k renormalised distribution (vLLM's and transformers' order), then min_p."""
    vocab = probs.shape[0]
    if top_k:
        vals, idx = probs.topk(min(top_k, vocab))
        mass = float(vals.sum())
    else:  # look at the best CANDIDATES first; fall back to the whole vocabulary when needed
        vals, idx = probs.topk(min(CANDIDATES, vocab))
        mass = 1.0
        too_narrow = (top_p < 1.0 and float(vals.sum()) < top_p) or \
                     (min_p > 0.0 and float(vals[-1]) >= min_p * float(vals[0]))
        if too_narrow and vals.shape[0] < vocab:
            vals, idx = probs.sort(descending=True)
    keep = torch.ones_like(vals, dtype=torch.bool)
    if top_p < 1.0:
        keep &= (vals.cumsum(0) - vals) < top_p * mass
    if min_p > 0.0:
        keep &= vals >= min_p * vals[0]
    keep[0] = True
    return vals[keep], idx[keep]


def _draw(probs: torch.Tensor, gen: torch.Generator | None) -> int:
    noise = torch.empty_like(probs).exponential_(generator=gen)
    return int((probs / noise).argmax())


def _softmax(row: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(row / temperature), also where that division overflows (a temperature that is
    0 in fp32, a logit near the float maximum) and would give inf - inf = NaN, which samples a
    token the grammar forbids: then the row is shifted by its maximum first (the maxima at
    exactly 0, the rest <= 0), the limit of the softmax as the temperature goes to 0."""
    scaled = row / temperature
    if not torch.isfinite(scaled.max()):
        top = row.max()
        scaled = torch.where(row == top, 0.0, (row - top) / temperature)
    return torch.softmax(scaled, dim=-1)


def _plain_greedy(seq: Sequence) -> bool:
    p = seq.params
    return (p.greedy and seq.matcher is None and p.repetition_penalty == 1.0
            and not p.presence_penalty and not p.frequency_penalty)


def sample(logits: torch.Tensor, seqs: list[Sequence], gen: torch.Generator) -> tuple[list[int], list]:
    """logits (N, V) in the model's dtype, one row per sequence that samples -> (token ids,
    logprob entries). Logprobs are those of the raw model (before grammar, penalties and
    temperature), as vLLM reports them.

    Plain greedy rows take the argmax of the logits as they are (widening bf16 to fp32 is
    exact, so the result is the same) and never pay the fp32 copy of a 262k-wide row; the
    other rows are processed in fp32. `gen` serves unseeded rows; seeded rows use their
    sequence's own generator."""
    logprob_rows = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
    raw_lp = torch.log_softmax(logits[logprob_rows].float(), dim=-1) if logprob_rows else None
    # max().indices: the first maximal index, like argmax, but vectorised for bf16 on CPU
    # (argmax on a (64, 262k) bf16 tensor takes 29 ms here, max 5 ms)
    tokens = logits.max(dim=-1).indices.tolist()
    special = [i for i, s in enumerate(seqs) if not _plain_greedy(s)]
    if special:
        sub = logits[special].float()  # a copy: the raw logits stay untouched
        sub_seqs = [seqs[i] for i in special]
        matchers = [s.matcher for s in sub_seqs]
        if any(m is not None for m in matchers):
            from fleetlm.engine.structured import apply_masks

            apply_masks(sub, matchers)  # grammar first: forbidden tokens are never sampled
        apply_penalties(sub, sub_seqs)
        # an extreme (allowed) penalty can push a logit to +inf; keep masked tokens at -inf
        torch.nan_to_num_(sub, nan=float("-inf"), posinf=torch.finfo(sub.dtype).max, neginf=float("-inf"))
        sub_argmax = sub.argmax(dim=-1).tolist()
        for j, (i, seq) in enumerate(zip(special, sub_seqs)):
            p = seq.params
            if p.greedy:
                tokens[i] = sub_argmax[j]
                continue
            probs = _softmax(sub[j], p.temperature)
            g = seq.generator if seq.generator is not None else gen
            if p.top_k or p.top_p < 1.0 or p.min_p > 0.0:
                vals, idx = _filtered_candidates(probs, p.top_k, p.top_p, p.min_p)
                tokens[i] = int(idx[_draw(vals, g)])
            else:
                tokens[i] = _draw(probs, g)
    entries: list = [None] * len(seqs)
    for j, i in enumerate(logprob_rows):
        lp = raw_lp[j]
        tok = tokens[i]
        k = seqs[i].params.logprobs
        top_v, top_i = lp.topk(k) if k else (lp[:0], lp[:0].long())
        rank = int((lp > lp[tok]).sum()) + 1
        entries[i] = TokenLogprob(tok, float(lp[tok]), rank, list(zip(top_i.tolist(), top_v.tolist())))
    return tokens, entries
