"""KVCacheManager on plain Sequence objects (no model): prefix hits, ref counts, eviction
order and all-or-nothing allocation."""

from __future__ import annotations

import itertools

from fleetlm.engine.kv_cache import KVCacheManager
from fleetlm.engine.sampling_params import SamplingParams
from fleetlm.engine.sequence import Sequence

_ids = itertools.count()


def make_seq(tokens: list[int]) -> Sequence:
    return Sequence(next(_ids), "r", 0, list(tokens), len(tokens), SamplingParams())


def computed(kv: KVCacheManager, tokens: list[int]) -> Sequence:
    """A sequence admitted without hits whose tokens are all computed and published."""
    seq = make_seq(tokens)
    assert kv.admit(seq, kv.lookup_prefix(seq), len(tokens))
    seq.num_computed_tokens = len(tokens)
    kv.cache_computed_blocks(seq)
    return seq


def kv_of(num_blocks: int = 16, block_size: int = 4, prefix: bool = True) -> KVCacheManager:
    return KVCacheManager(num_blocks=num_blocks, block_size=block_size, enable_prefix_caching=prefix)


A = list(range(10, 20))  # 10 tokens: two full blocks of 4, one partial


def test_prefix_hit_only_full_blocks_and_never_the_last_token():
    kv = kv_of()
    a = computed(kv, A)
    assert kv.lookup_prefix(make_seq(A)) == a.block_ids[:2]  # the partial third block never hits
    assert kv.lookup_prefix(make_seq(A[:8])) == a.block_ids[:1]  # block 2 holds the last token
    assert kv.lookup_prefix(make_seq(A[:8] + [99])) == a.block_ids[:2]
    assert kv.lookup_prefix(make_seq(A[:5] + [99] + A[6:])) == a.block_ids[:1]  # differs in block 2
    assert kv.lookup_prefix(make_seq([99] + A[1:])) == []  # chained: a later equal block never hits
    assert kv.lookup_prefix(make_seq(A[:3])) == []


def test_blocks_are_published_only_once_computed():
    kv = kv_of()
    a = make_seq(A)
    assert kv.admit(a, [], len(A))
    a.num_computed_tokens = 7
    kv.cache_computed_blocks(a)
    assert kv.lookup_prefix(make_seq(A)) == a.block_ids[:1]
    a.num_computed_tokens = 10
    kv.cache_computed_blocks(a)
    assert kv.lookup_prefix(make_seq(A)) == a.block_ids[:2]


def test_no_hits_with_prefix_caching_off():
    kv = kv_of(prefix=False)
    computed(kv, A)
    assert kv.lookup_prefix(make_seq(A)) == []


def test_admit_with_hit_shares_blocks_and_counts_refs():
    kv = kv_of(num_blocks=8)
    a = computed(kv, A)
    assert kv.num_free_blocks == 5
    b = make_seq(A + [1, 2])
    hit = kv.lookup_prefix(b)
    assert kv.admit(b, hit, b.num_tokens)
    assert b.num_computed_tokens == 8
    assert b.block_ids[:2] == a.block_ids[:2] and b.block_ids[2] != a.block_ids[2]
    assert [kv.ref_cnt[x] for x in b.block_ids] == [2, 2, 1]
    assert kv.num_free_blocks == 4  # only b's private third block was taken
    assert (kv.hits, kv.queries) == (8, 10 + 12)
    kv.free_seq(a)
    assert [kv.ref_cnt[x] for x in b.block_ids] == [1, 1, 1]
    assert kv.num_free_blocks == 5 and not set(b.block_ids) & set(kv.free)
    kv.free_seq(b)
    assert kv.num_free_blocks == 8 and kv.usage == 0.0
    assert (b.block_ids, b.num_computed_tokens) == ([], 0)


def test_freed_blocks_still_hit_until_reused():
    kv = kv_of(num_blocks=8)
    a = computed(kv, A)
    kv.free_seq(a)
    assert kv.num_free_blocks == 8
    b = make_seq(A)
    hit = kv.lookup_prefix(b)
    assert len(hit) == 2
    assert kv.admit(b, hit, b.num_tokens)
    assert kv.num_free_blocks == 5  # the two hit blocks left the free queue, plus one new
    assert not set(b.block_ids) & set(kv.free)


def test_eviction_order_unhashed_first_then_least_recently_freed_tail_first():
    kv = kv_of(num_blocks=8, block_size=2)
    a = computed(kv, [1, 2, 3, 4, 5])  # blocks: [1,2] [3,4] hashed, [5] partial (unhashed)
    b = computed(kv, [6, 7, 8, 9, 10])
    a_blocks, b_blocks = list(a.block_ids), list(b.block_ids)
    kv.free_seq(a)
    kv.free_seq(b)  # freed after a
    never_used = set(range(8)) - set(a_blocks) - set(b_blocks)
    filler = make_seq([0] * 8)  # unhashed blocks (never used, or partial) are reused first
    assert kv.allocate(filler, 8)
    assert set(filler.block_ids) == never_used | {a_blocks[2], b_blocks[2]}
    assert len(kv.lookup_prefix(make_seq([1, 2, 3, 4, 5]))) == 2  # nothing hashed evicted yet
    more = make_seq([0] * 2)
    assert kv.allocate(more, 2)  # evicts a's tail block (a freed first; tail before prefix)
    assert more.block_ids == [a_blocks[1]]
    assert len(kv.lookup_prefix(make_seq([1, 2, 3, 4, 5]))) == 1
    assert len(kv.lookup_prefix(make_seq([6, 7, 8, 9, 10]))) == 2
    assert kv.allocate(more, 6)  # then a's head, then b's tail
    assert more.block_ids[1:] == [a_blocks[0], b_blocks[1]]
    assert kv.lookup_prefix(make_seq([1, 2, 3, 4, 5])) == []
    assert kv.lookup_prefix(make_seq([6, 7, 8, 9, 10])) == [b_blocks[0]]


def test_evicting_a_private_twin_keeps_the_cached_original():
    kv = kv_of(num_blocks=4, block_size=4)
    a = make_seq(A[:5])
    b = make_seq(A[:5])
    assert kv.admit(a, [], 5) and kv.admit(b, [], 5)  # both compute the same prompt at once
    for s in (a, b):
        s.num_computed_tokens = 5
        kv.cache_computed_blocks(s)
    assert kv.lookup_prefix(make_seq(A[:5])) == a.block_ids[:1]  # the first to publish wins
    b_blocks = list(b.block_ids)
    kv.free_seq(b)
    other = make_seq([0] * 8)
    assert kv.allocate(other, 8)  # reuses b's two blocks, including its hashed twin
    assert set(other.block_ids) == set(b_blocks)
    assert kv.lookup_prefix(make_seq(A[:5])) == a.block_ids[:1]


def test_admit_is_all_or_nothing():
    kv = kv_of(num_blocks=5, block_size=4)
    a = computed(kv, A)  # 3 blocks, 2 of them cached
    kv.free_seq(a)
    hog = make_seq([0] * 8)
    assert kv.allocate(hog, 8)  # takes a's unhashed tail and a never-used block
    assert kv.num_free_blocks == 3
    b = make_seq(A + [1, 2, 3])
    hit = kv.lookup_prefix(b)
    assert len(hit) == 2
    before = (list(kv.ref_cnt), list(kv.free), dict(kv.cached), kv.hits, kv.queries)
    assert not kv.admit(b, hit, b.num_tokens)  # 2 hit blocks (both in the free queue) + 2 new > 3
    assert (list(kv.ref_cnt), list(kv.free), dict(kv.cached), kv.hits, kv.queries) == before
    assert b.block_ids == [] and b.num_computed_tokens == 0
    assert kv.admit(b, hit, 9)  # 2 hits + 1 new block fits exactly
    assert kv.num_free_blocks == 0 and b.num_computed_tokens == 8


def test_allocate_is_all_or_nothing():
    kv = kv_of(num_blocks=4, block_size=4)
    s = make_seq([0] * 8)
    assert kv.allocate(s, 8)
    t = make_seq([0] * 12)
    assert not kv.allocate(t, 12)
    assert t.block_ids == [] and kv.num_free_blocks == 2
    assert kv.allocate(s, 9) and len(s.block_ids) == 3
    assert kv.allocate(s, 12) and len(s.block_ids) == 3  # still fits the third block
    assert not kv.allocate(s, 20) and len(s.block_ids) == 3
