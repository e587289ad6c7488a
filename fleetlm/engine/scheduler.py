"""Continuous batching under a per-step token budget.

Each step, every running sequence is owed `num_tokens - num_computed_tokens` tokens: one for
a decoding sequence, up to the whole remaining prompt for a new one. Running sequences are
served first (first come, first served), then waiting ones are admitted while the budget,
the sequence cap and free KV blocks allow. A prompt longer than the remaining budget is
chunked over several steps, mixed with other sequences' decodes. When blocks run out, the
most recently admitted running sequence is preempted: its blocks are freed and it is
recomputed later (its computed blocks usually survive in the prefix cache).
A sequence served by a LoRA adapter also needs one of the pool's adapter slots while it
runs; when none is free it waits, like a sequence that does not fit the KV cache.
Background sequences (`SamplingParams.priority` > 0, batch jobs) sit out every step in which
an interactive one is computing its prompt or waits with room to start it: they keep their
blocks and go on afterwards, so an interactive prompt is never computed beside them.
A waiting sequence whose next uncached prompt block is one a running sequence is computing
(concurrent requests with a shared prefix: a system prompt, a tool list, the same question)
waits until that block is in the prefix cache instead of computing it too, as `n` siblings
wait for the first sequence's prompt.
With a draft proposer (speculative decoding), a decoding sequence may be owed more than one
token: its last token plus the drafts the proposer offers, counted against the budget and
given KV slots like any other token (speculative.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fleetlm.engine.kv_cache import KVCacheManager
from fleetlm.engine.sequence import Sequence, SeqStatus


@dataclass
class SchedulerOutput:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)  # per seq, tokens computed this step
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, kv: KVCacheManager, *, max_num_seqs: int, max_num_batched_tokens: int,
                 lora_pool=None, proposer=None, max_model_len: int | None = None):
        self.kv = kv
        self.proposer = proposer  # speculative.NgramProposer, or None: one token per decode
        self.max_model_len = max_model_len
        self.lora_pool = lora_pool  # lora.LoRAPool, or None when adapters are off
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0  # total since start (metrics, tests)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        pause = self._background_pauses()
        spec = self.proposer is not None and len(self.running) <= self.proposer.max_batch
        # 1. running sequences, oldest first; preempt from the back when blocks run out
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if pause and seq.params.priority > 0:
                i += 1  # sits this step out, keeping its blocks
                continue
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            seq.draft_ids = self._drafts(seq, budget) if spec and n == 1 and seq.prompt_computed else []
            if seq.draft_ids and not self.kv.allocate(seq, seq.num_computed_tokens + 1 + len(seq.draft_ids)):
                seq.draft_ids = []  # no room to speculate: decode one token as usual
            n += len(seq.draft_ids)
            while not self.kv.allocate(seq, seq.num_computed_tokens + n):
                victim = self.running.pop()
                self._preempt(victim, out)
                if victim is seq:
                    break
            else:
                out.seqs.append(seq)
                out.num_new_tokens.append(n)
                budget -= n
                i += 1
        # 2. admit waiting sequences while budget, sequence cap and blocks allow
        if out.preempted:
            return out  # memory is tight: let running sequences drain first
        in_flight = None  # hashes of prompt blocks running sequences compute now (built on first need)
        for seq in list(self.waiting):
            if budget <= 0 or len(self.running) >= self.max_num_seqs:
                break
            if seq.wait_for is not None and not (seq.wait_for.prompt_computed or seq.wait_for.finished):
                continue  # a sibling: wait until the shared prompt is in the cache
            if pause and seq.params.priority > 0:
                continue  # background: interactive prompts first
            hit = self.kv.lookup_prefix(seq)
            missing = self.kv.first_missing_hash(seq, hit)
            if missing is not None:
                in_flight = self._in_flight(pause) if in_flight is None else in_flight
                if missing in in_flight:
                    continue  # a running prompt is computing its next blocks: hit them later
            if not self._take_lora_slot(seq):
                break  # every adapter slot is in use; FCFS as for memory
            n = min(seq.num_tokens - len(hit) * self.kv.block_size, budget)
            if not self.kv.admit(seq, hit, len(hit) * self.kv.block_size + n):
                self._drop_lora_slot(seq)
                break  # no room; FCFS: do not let later, smaller requests overtake
            if seq.num_preemptions == 0 and seq.num_output_tokens == 0:
                seq.num_cached_prompt_tokens = seq.num_computed_tokens
            self.waiting.remove(seq)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            if in_flight is not None:
                in_flight.update(self.kv.prompt_hashes_in_flight(seq))
            out.seqs.append(seq)
            out.num_new_tokens.append(n)
            budget -= n
        return out

    def _in_flight(self, pause: bool) -> set[bytes]:
        """Hashes of the prompt blocks running sequences have yet to compute, leaving out the
        background ones that sit this step out (a request must not wait on a paused one)."""
        return {h for r in self.running if not (pause and r.params.priority > 0)
                for h in self.kv.prompt_hashes_in_flight(r)}

    def _drafts(self, seq: Sequence, budget: int) -> list[int]:
        """Draft tokens for a decoding seq, never past its max_tokens, the context or the budget."""
        limit = budget - 1
        if seq.params.max_tokens is not None:
            limit = min(limit, seq.params.max_tokens - seq.num_output_tokens - 1)
        if self.max_model_len is not None:
            limit = min(limit, self.max_model_len - seq.num_tokens - 1)
        return self.proposer.propose(seq, limit) if limit > 0 else []

    def _background_pauses(self) -> bool:
        """Whether background rows sit this step out: an interactive sequence is computing its
        prompt, or waits with a free sequence slot and blocks for its whole prompt (so a
        queue stuck for memory never stops the background rows that will free it)."""
        if not any(s.params.priority > 0 for s in self.running) and \
                not any(s.params.priority > 0 for s in self.waiting):
            return False
        if any(s.params.priority == 0 and not s.prompt_computed for s in self.running):
            return True
        if len(self.running) >= self.max_num_seqs:
            return False
        return any(s.params.priority == 0 and s.wait_for is None
                   and self.kv.blocks_needed(s, s.num_tokens) <= self.kv.num_free_blocks for s in self.waiting)

    def _take_lora_slot(self, seq: Sequence) -> bool:
        if seq.lora is None:
            return True
        slot = self.lora_pool.acquire(seq.lora)
        seq.lora_slot = slot or 0
        return slot is not None

    def _drop_lora_slot(self, seq: Sequence) -> None:
        if seq.lora_slot:
            self.lora_pool.release(seq.lora_slot)
            seq.lora_slot = 0

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        seq.draft_ids = []
        self._drop_lora_slot(seq)
        self.kv.free_seq(seq)
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Mark seq finished and free its blocks at once (also used for aborts)."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
            self._drop_lora_slot(seq)
        elif seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        self.kv.free_seq(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = seq.finish_reason or reason
