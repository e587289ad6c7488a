"""Scheduler on plain Sequence objects (no model): token budget, chunked prefill, decode
priority, sequence cap, preemption and prefix hits at admission. `advance` plays the engine:
it counts the scheduled tokens as computed and appends a sampled token where one is due."""

from __future__ import annotations

import itertools

from fleetlm.engine.kv_cache import KVCacheManager
from fleetlm.engine.sampling_params import SamplingParams
from fleetlm.engine.scheduler import Scheduler, SchedulerOutput
from fleetlm.engine.sequence import Sequence, SeqStatus

_ids = itertools.count()


def make_seq(n_tokens: int, start: int = 3, wait_for: Sequence | None = None) -> Sequence:
    tokens = [start + i for i in range(n_tokens)]
    return Sequence(next(_ids), "r", 0, tokens, n_tokens, SamplingParams(), wait_for=wait_for)


def make_sched(*, num_blocks=64, block_size=16, max_num_seqs=8, budget=512, prefix=True) -> Scheduler:
    kv = KVCacheManager(num_blocks=num_blocks, block_size=block_size, enable_prefix_caching=prefix)
    return Scheduler(kv, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget)


def advance(sched: Scheduler, out: SchedulerOutput, token: int = 7) -> None:
    for seq, n in zip(out.seqs, out.num_new_tokens):
        seq.num_computed_tokens += n
        sched.kv.cache_computed_blocks(seq)
        if seq.num_computed_tokens >= seq.prompt_len:
            seq.prompt_computed = True
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(token)


def scheduled(out: SchedulerOutput) -> list[tuple[Sequence, int]]:
    return list(zip(out.seqs, out.num_new_tokens))


def test_long_prompt_is_chunked_under_the_budget():
    s = make_sched(budget=32)
    seq = make_seq(100)
    s.add(seq)
    chunks = []
    for _ in range(5):
        out = s.schedule()
        assert out.seqs == [seq] and out.total_tokens <= 32
        assert len(seq.block_ids) * s.kv.block_size >= seq.num_computed_tokens + out.num_new_tokens[0]
        chunks.append(out.num_new_tokens[0])
        advance(s, out)
    assert chunks == [32, 32, 32, 4, 1]  # then a one-token decode
    assert seq.num_tokens == 102 and seq.status is SeqStatus.RUNNING


def test_decodes_are_scheduled_before_new_prompts():
    s = make_sched(budget=32)
    a, b = make_seq(5), make_seq(6)
    s.add(a)
    s.add(b)
    advance(s, s.schedule())  # both prompts in one step
    c = make_seq(100)
    s.add(c)
    out = s.schedule()
    assert scheduled(out) == [(a, 1), (b, 1), (c, 30)]  # the prompt gets what is left
    advance(s, out)
    tight = make_sched(budget=2)
    for x in (make_seq(1), make_seq(1)):
        tight.add(x)
    advance(tight, tight.schedule())
    late = make_seq(10)
    tight.add(late)
    out = tight.schedule()
    assert [n for _, n in scheduled(out)] == [1, 1] and late.status is SeqStatus.WAITING


def test_the_budget_goes_to_the_earliest_prompt_first():
    s = make_sched(budget=32)
    long, short = make_seq(100), make_seq(3)
    s.add(long)
    s.add(short)
    steps = []
    for _ in range(5):
        out = s.schedule()
        steps.append([(x is long and "long" or "short", n) for x, n in scheduled(out)])
        advance(s, out)
    assert steps == [[("long", 32)], [("long", 32)], [("long", 32)], [("long", 4), ("short", 3)],
                     [("long", 1), ("short", 1)]]


def test_max_num_seqs_is_respected():
    s = make_sched(max_num_seqs=2)
    seqs = [make_seq(4) for _ in range(5)]
    for x in seqs:
        s.add(x)
    out = s.schedule()
    assert out.seqs == seqs[:2] and len(s.running) == 2 and list(s.waiting) == seqs[2:]
    advance(s, out)
    s.finish(seqs[0], "stop")
    assert seqs[0].finished and seqs[0].block_ids == []
    out = s.schedule()
    assert out.seqs == [seqs[1], seqs[2]] and len(s.running) == 2


def test_preemption_takes_the_most_recently_admitted_and_frees_its_blocks():
    s = make_sched(num_blocks=6, block_size=2, prefix=False)
    a, b, c = make_seq(4), make_seq(4, start=20), make_seq(4, start=40)
    for x in (a, b, c):
        s.add(x)
    out = s.schedule()
    assert out.seqs == [a, b, c] and s.kv.num_free_blocks == 0
    advance(s, out)  # each now has 5 tokens and needs a third block
    d = make_seq(2, start=60)
    s.add(d)
    out = s.schedule()
    assert out.preempted == [c]
    assert scheduled(out) == [(a, 1), (b, 1)]
    assert c.status is SeqStatus.WAITING and c.block_ids == [] and c.num_computed_tokens == 0
    assert list(s.waiting) == [c, d]  # the victim goes back to the front; nothing admitted
    assert s.running == [a, b] and s.num_preemptions == 1 and c.num_preemptions == 1
    assert s.kv.num_free_blocks == 0  # c's two blocks went to a and b
    s.finish(a, "stop")
    out = s.schedule()
    assert scheduled(out) == [(b, 1), (c, 5)]  # c is readmitted before d and recomputes 5 tokens
    assert list(s.waiting) == [d]


def test_a_sequence_that_cannot_grow_preempts_itself():
    s = make_sched(num_blocks=2, block_size=2, prefix=False)
    a = make_seq(4)
    s.add(a)
    advance(s, s.schedule())
    out = s.schedule()
    assert not out and out.preempted == [a] and s.running == [] and s.kv.num_free_blocks == 2


def test_admission_uses_cached_prefix_blocks():
    s = make_sched(block_size=4, budget=512)
    a = make_seq(10)
    s.add(a)
    advance(s, s.schedule())
    b = make_seq(10)
    s.add(b)
    out = s.schedule()
    assert scheduled(out) == [(a, 1), (b, 2)]  # 8 tokens come from the cache
    assert b.num_computed_tokens == 8 and b.num_cached_prompt_tokens == 8
    assert b.block_ids[:2] == a.block_ids[:2]


def test_fcfs_a_waiting_request_that_does_not_fit_blocks_later_ones():
    s = make_sched(num_blocks=4, block_size=4, prefix=False)
    running = make_seq(8)
    s.add(running)
    advance(s, s.schedule())  # 9 tokens now, 3 blocks after the next allocation
    big, small = make_seq(12), make_seq(2)
    s.add(big)
    s.add(small)
    out = s.schedule()
    assert out.seqs == [running] and list(s.waiting) == [big, small]


def test_sibling_waits_for_the_shared_prompt_then_hits_it():
    s = make_sched(block_size=4, budget=8)
    first = make_seq(10)
    sibling = make_seq(10, wait_for=first)
    s.add(first)
    s.add(sibling)
    out = s.schedule()
    assert scheduled(out) == [(first, 8)]  # the sibling does not compute the prompt too
    advance(s, out)
    out = s.schedule()
    assert scheduled(out) == [(first, 2)]
    advance(s, out)
    out = s.schedule()
    assert scheduled(out) == [(first, 1), (sibling, 2)]
    assert sibling.block_ids[:2] == first.block_ids[:2] and sibling.num_cached_prompt_tokens == 8


def test_a_request_waits_for_blocks_a_running_prompt_is_computing():
    """Two requests with the same prompt arrive together: the second is not admitted beside
    the first's last chunk to compute the same blocks, then takes them from the cache."""
    s = make_sched(block_size=4, budget=8)
    first, second = make_seq(13), make_seq(13)
    s.add(first)
    s.add(second)
    out = s.schedule()
    assert scheduled(out) == [(first, 8)]
    advance(s, out)
    out = s.schedule()
    assert scheduled(out) == [(first, 5)]  # 3 tokens of budget left: `second` would compute block 2 too
    advance(s, out)
    out = s.schedule()
    assert scheduled(out) == [(first, 1), (second, 1)]
    assert second.block_ids[:3] == first.block_ids[:3] and second.num_cached_prompt_tokens == 12


def test_a_request_whose_next_block_is_its_own_is_admitted_beside_a_shared_prefill():
    """Only the next block the waiting request lacks matters: sharing cached blocks with a
    prompt still being computed does not hold it back."""
    s = make_sched(block_size=4, budget=12)
    first = make_seq(20)
    s.add(first)
    advance(s, s.schedule())  # first's blocks 0-2 are cached, 8 tokens to go
    other = make_seq(13)  # the same first 8 tokens, then its own
    other.token_ids[8:] = [900 + i for i in range(5)]
    s.add(other)
    out = s.schedule()
    assert scheduled(out) == [(first, 8), (other, 4)]
    assert other.num_cached_prompt_tokens == 8


def test_background_rows_sit_out_the_steps_that_compute_an_interactive_prompt():
    s = make_sched(budget=32)
    batch = [Sequence(next(_ids), "b", 0, [3, 4, 5], 3, SamplingParams(priority=1)) for _ in range(2)]
    for b in batch:
        s.add(b)
    advance(s, s.schedule())  # both background prompts computed: they decode from now on
    assert [n for _, n in scheduled(s.schedule())] == [1, 1]
    user = make_seq(50, start=100)  # an interactive prompt of two chunks under the budget
    s.add(user)
    for _ in range(2):
        out = s.schedule()
        assert out.seqs == [user]  # its prompt alone, the background rows keep their blocks
        advance(s, out)
        assert all(b.block_ids for b in batch)
    out = s.schedule()  # its prompt is in: everyone decodes together again
    assert set(out.seqs) == {user, *batch} and out.total_tokens == 3
    late = Sequence(next(_ids), "b", 0, [9] * 20, 20, SamplingParams(priority=1))
    s.add(late)
    assert late in s.schedule().seqs  # no interactive prompt pending: background is admitted as usual


def test_an_interactive_request_stuck_for_memory_does_not_stop_the_background():
    s = make_sched(num_blocks=4, block_size=16, budget=64)
    bg = Sequence(next(_ids), "b", 0, list(range(3, 35)), 32, SamplingParams(priority=1))  # 2 blocks
    s.add(bg)
    advance(s, s.schedule())
    user = make_seq(60, start=200)  # needs 4 blocks: never fits while the background row lives
    s.add(user)
    out = s.schedule()
    assert out.seqs == [bg]  # the background row goes on, so its blocks come free in time
