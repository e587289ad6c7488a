"""The sampler: per-row parameters applied to a batch of fp32 logits.

Order (as vLLM): raw logprobs (if asked) -> penalties -> greedy argmax, or temperature ->
min_p / top_k / top_p -> one draw. A draw is an inverse-CDF lookup with one uniform number
per row (`draw`), exact up to the fp32 rounding of 512-entry block sums (~1e-7 of a
block's mass); a seeded sequence takes that number from its own generator
over a batch-independent candidate set, so its text does not depend on its batch neighbours.
(The exponential race, argmax p / E, needs a random number per vocabulary entry: 5 ms a row
for a 262k vocabulary on a CPU core, more than the rest of a decode step.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fleetlm.engine.sequence import Sequence

# Draws look up block sums first, then one block's cumulative sum (fp64): one fp64 cumulative
# sum over 262k entries costs 1.5 ms a row on a CPU core, and an fp32 one cannot tell apart
# the tail's tokens under 6e-8.
BLOCK = 512

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


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token index per row of `probs` (N, V), non-negative and not necessarily normalised,
    drawn by inverse CDF with `u` (N,), uniform in [0, 1): the row's first index whose
    cumulative mass exceeds u times its total. A zero-probability index is never returned
    from a row with some mass."""
    if probs.device.type == "mps":  # no fp64 there: the lookup runs on the CPU
        return draw(probs.cpu(), u.cpu()).to(probs.device)
    n, vocab = probs.shape
    if vocab % BLOCK:
        probs = torch.nn.functional.pad(probs, (0, BLOCK - vocab % BLOCK))
    blocks = probs.reshape(n, -1, BLOCK)
    # block sums in fp32 (relative error ~1e-7 of each block's own mass; an fp64 sum of the
    # whole row costs 30x more), accumulated across blocks in fp64
    cdf = blocks.sum(-1).to(torch.float64).cumsum(1)  # (N, blocks)
    target = u.to(torch.float64)[:, None] * cdf[:, -1:]
    b = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[1] - 1)
    below = torch.where(b > 0, cdf.gather(1, (b - 1).clamp(min=0)), 0.0)
    inner = blocks[torch.arange(n, device=probs.device), b[:, 0]].to(torch.float64).cumsum(1)
    # where u falls inside the chosen block, as a fraction of the block's mass, so the block
    # sum's fp32 rounding cannot push the lookup past the block's end
    frac = (target - below) / (cdf.gather(1, b) - below)
    j = torch.searchsorted(inner, frac * inner[:, -1:], right=True).clamp_(max=BLOCK - 1)
    tokens = b[:, 0] * BLOCK + j[:, 0]
    # fp64 rounding at a block's end can land on a zero entry (~1e-16 a draw): the row's best then
    zero = probs.gather(1, tokens[:, None])[:, 0] <= 0
    if bool(zero.any()):
        tokens[zero] = probs[zero].argmax(1)
    return tokens


def _uniform(gen: torch.Generator) -> torch.Tensor:
    fp64 = gen.device.type != "mps"  # (MPS has no float64)
    return torch.rand(1, generator=gen, dtype=torch.float64 if fp64 else torch.float32, device=gen.device)


def _softmax(rows: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """softmax(rows / temperature) over the last dim, rows (N, V), temperature (N, 1), also
    where that division overflows (a temperature that is 0 in fp32, a logit near the float
    maximum) and would give inf - inf = NaN, which samples a token the grammar forbids: such a
    row is shifted by its maximum first (the maxima at exactly 0, the rest <= 0), the limit of
    the softmax as the temperature goes to 0. `rows` is overwritten."""
    top = rows.amax(-1, keepdim=True)
    bad = ~torch.isfinite(top / temperature)[:, 0]
    fixed = None
    if bool(bad.any()):
        r, t = rows[bad], temperature[bad]
        fixed = torch.where(r == top[bad], 0.0, (r - top[bad]) / t)
    scaled = rows.div_(temperature)
    if fixed is not None:
        scaled[bad] = fixed
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
    special = [i for i, s in enumerate(seqs) if not _plain_greedy(s)]
    # (skipped when every row samples: 7 ms for 64 rows that would all be overwritten)
    tokens = logits.max(dim=-1).indices.tolist() if len(special) < len(seqs) else [0] * len(seqs)
    if special:
        # a copy (the raw logits stay untouched), overwritten below row by row
        src = logits if len(special) == len(seqs) else logits[special]
        sub = src.to(torch.float32, copy=src is logits)
        sub_seqs = [seqs[i] for i in special]
        matchers = [s.matcher for s in sub_seqs]
        if any(m is not None for m in matchers):
            from fleetlm.engine.structured import apply_masks

            apply_masks(sub, matchers)  # grammar first: forbidden tokens are never sampled
        apply_penalties(sub, sub_seqs)
        # an extreme (allowed) penalty can push a logit to +inf; keep masked tokens at -inf
        torch.nan_to_num_(sub, nan=float("-inf"), posinf=torch.finfo(sub.dtype).max, neginf=float("-inf"))
        # (greedy rows here have a grammar or penalties; argmax of fp32 rows costs 0.4 ms each)
        sub_argmax = sub.argmax(dim=-1).tolist() if any(s.params.greedy for s in sub_seqs) else []
        plain, uniforms = [], []  # temperature-only rows: one softmax and one draw for them all
        for j, (i, seq) in enumerate(zip(special, sub_seqs)):
            p = seq.params
            if p.greedy:
                tokens[i] = sub_argmax[j]
                continue
            u = _uniform(seq.generator if seq.generator is not None else gen)
            if p.top_k or p.top_p < 1.0 or p.min_p > 0.0:
                probs = _softmax(sub[j : j + 1], torch.tensor([[p.temperature]], dtype=sub.dtype, device=sub.device))[0]
                vals, idx = _filtered_candidates(probs, p.top_k, p.top_p, p.min_p)
                tokens[i] = int(idx[draw(vals[None], u)])
            else:
                plain.append(j)
                uniforms.append(u)
        if plain:
            temps = torch.tensor([[sub_seqs[j].params.temperature] for j in plain], dtype=sub.dtype,
                                 device=sub.device)
            rows = sub if len(plain) == len(special) else sub[plain]
            for j, tok in zip(plain, draw(_softmax(rows, temps), torch.cat(uniforms)).tolist()):
                tokens[special[j]] = tok
    entries: list = [None] * len(seqs)
    for j, i in enumerate(logprob_rows):
        lp = raw_lp[j]
        tok = tokens[i]
        k = seqs[i].params.logprobs
        top_v, top_i = lp.topk(k) if k else (lp[:0], lp[:0].long())
        rank = int((lp > lp[tok]).sum()) + 1
        entries[i] = TokenLogprob(tok, float(lp[tok]), rank, list(zip(top_i.tolist(), top_v.tolist())))
    return tokens, entries
