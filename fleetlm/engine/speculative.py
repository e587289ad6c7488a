"""Speculative decoding without a draft model: n-gram (prompt-lookup) drafts, verified by
the target model inside the normal step.

Contract:
- `NgramProposer.propose(seq, limit)` returns up to `limit` draft tokens for a decoding
  sequence: the continuation of the most recent earlier occurrence of its last n tokens
  (longest n first), in the prompt or the output so far. Extraction, tool calls, code edits
  and RAG answers copy long spans of their prompt, so these drafts are often right; text that
  copies nothing rarely matches, and then nothing is proposed and nothing is paid.
- The scheduler appends the drafts to the sequence's step (its token budget counts them);
  the model runner computes logits at every draft position; `verify` then samples each
  position in turn exactly as plain decoding would (same processors, grammar and generator)
  and keeps drafts while the sampled token equals the draft. With a draft that is one fixed
  token, "draw x ~ p, accept iff x equals the draft, else emit x" is the standard rejection
  rule (accept with p(d), else draw from p without d, renormalised), so the output
  distribution is unchanged; greedy rows are token-identical to no speculation up to the
  arithmetic of a wider matmul, and a seeded row draws once per emitted token, as without it.
- Only committed tokens count as computed: rejected drafts' KV slots are overwritten later,
  and prefix-cache blocks are hashed from committed tokens only.
- Each sequence adapts its draft length (`DraftState`): it starts at 2 tokens, doubles while
  drafts are accepted in full, shrinks to what was accepted, and after a draft that missed
  entirely pauses for a doubling number of steps, so text that never matches pays (almost)
  nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# n-gram sizes looked up, longest first. A single matching token is too weak a signal in
# free text (the most recent "the" predicts little), two tokens copy spans reliably.
NGRAM_MAX, NGRAM_MIN = 4, 2
MAX_COOLDOWN_STEPS = 32  # longest pause after repeated misses; then it tries again


@dataclass
class DraftState:
    """Per-sequence draft bookkeeping, owned by the proposer."""

    k: int  # draft length asked for next
    misses: int = 0  # verifications in a row that accepted nothing
    cooldown: int = 0  # steps left without proposing
    index: dict[tuple[int, ...], int] = field(default_factory=dict)  # n-gram -> end of its latest occurrence
    indexed: int = 0  # token_ids[:indexed] are in `index`


class NgramProposer:
    def __init__(self, num_draft_tokens: int, *, max_batch: int):
        self.num_draft_tokens = num_draft_tokens
        # Verification multiplies a row's work by its draft length; at a small batch the step
        # is bound by reading the weights and the extra rows are nearly free, at a large one
        # they are not, so speculation is off while more rows than this are decoding.
        self.max_batch = max_batch
        self.drafted = 0  # totals since start (stats, benchmarks): draft tokens proposed,
        self.accepted = 0  # accepted,
        self.verifications = 0  # and verification steps (rows that carried drafts)

    @property
    def tokens_per_verification(self) -> float:
        """Tokens emitted per verification step so far (1 + accepted drafts); 0 before any."""
        return (self.accepted + self.verifications) / self.verifications if self.verifications else 0.0

    def state(self, seq) -> DraftState:
        if seq.draft_state is None:  # start short: most drafts of text that copies nothing miss
            seq.draft_state = DraftState(k=min(2, self.num_draft_tokens))
        return seq.draft_state

    def propose(self, seq, limit: int) -> list[int]:
        """Up to min(limit, the row's draft length) tokens; [] when nothing matches."""
        st = self.state(seq)
        if st.cooldown:
            st.cooldown -= 1
            return []
        limit = min(limit, st.k)
        if limit < 1:
            return []
        matcher = seq.matcher
        if matcher is not None:
            forced = matcher.forced_tokens()[:limit]
            if forced:  # the grammar allows nothing else: a draft that cannot miss
                return forced
        draft = self._lookup(seq.token_ids, st, limit)
        if draft and matcher is not None:
            draft = draft[: matcher.valid_prefix(draft)]
        return draft

    def _lookup(self, tokens: list[int], st: DraftState, limit: int) -> list[int]:
        n_tok = len(tokens)
        # index every n-gram that ends before the current end (so a match has a continuation)
        for end in range(max(st.indexed, NGRAM_MIN), n_tok):
            for n in range(NGRAM_MIN, min(NGRAM_MAX, end) + 1):
                st.index[tuple(tokens[end - n : end])] = end
        st.indexed = max(st.indexed, n_tok)
        for n in range(min(NGRAM_MAX, n_tok - 1), NGRAM_MIN - 1, -1):
            end = st.index.get(tuple(tokens[n_tok - n :]))
            if end is not None:
                return tokens[end : end + limit]
        return []

    def feedback(self, seq, drafted: int, accepted: int) -> None:
        """Adapt the row's draft length after a verification that kept `accepted` of `drafted`."""
        st = self.state(seq)
        self.drafted += drafted
        self.accepted += accepted
        self.verifications += 1
        if accepted == drafted:  # a long copy: double the draft to reach its speed quickly
            st.k = min(self.num_draft_tokens, 2 * st.k)
            st.misses = 0
        elif accepted == 0:  # each miss costs the rows it drafted: pause 2, 4, ... steps
            st.misses += 1
            st.k = 1
            st.cooldown = min(MAX_COOLDOWN_STEPS, 1 << st.misses)
        else:
            st.k = accepted + 1
            st.misses = 0


def verify(seq, logits, sample_one: Callable, take: Callable) -> int:
    """Sample seq's draft positions in order and keep drafts while they match.

    logits: (1 + len(seq.draft_ids), V), row j predicting the token after draft j - 1.
    sample_one(row (1, V), seq) -> (token, logprob entry), as plain decoding samples it;
    take(seq, token, logprob) appends a token (grammar, stop checks; may finish seq).
    Returns how many drafts were accepted; 1 + that many tokens were taken, fewer if seq
    finished on the way."""
    drafts = seq.draft_ids
    accepted = 0
    for j in range(len(drafts) + 1):
        tok, lp = sample_one(logits[j : j + 1], seq)
        take(seq, tok, lp)
        if seq.finished or j == len(drafts) or tok != drafts[j]:
            break
        accepted += 1
    return accepted
