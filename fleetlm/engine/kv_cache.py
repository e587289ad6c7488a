"""Paged KV-cache bookkeeping: a pool of fixed-size blocks, block tables per sequence,
automatic prefix caching and eviction. Knows nothing about tensors; the model runner owns
the cache tensors and reads this module's block ids.

Prefix caching: every full block is named by a hash chained over all tokens before it, so a
block hit means the whole prefix matches. Blocks are reference-counted; a block whose count
drops to zero keeps its contents and its hash in the free queue until it is reused, so later
requests with the same prefix still hit it (eviction is least-recently-freed first).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from fleetlm.engine.sequence import Sequence


def chain_hash(parent: bytes, tokens: list[int]) -> bytes:
    """Hash of one full block given its parent's hash (collision-resistant, unlike hash())."""
    return hashlib.blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()


class KVCacheManager:
    def __init__(self, *, num_blocks: int, block_size: int, enable_prefix_caching: bool):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_cnt = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # hash -> block id holding that prefix block
        # Free blocks in eviction order (first = reused first). An OrderedDict gives O(1)
        # removal from the middle when a cached free block is hit again.
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.hits = 0  # prefix-cache statistics, in tokens
        self.queries = 0

    # ---- queries ---------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by live sequences."""
        return 1.0 - len(self.free) / self.num_blocks

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_ids))

    def _hash_blocks(self, seq: Sequence, num_full_blocks: int) -> list[bytes]:
        """Make sure `seq.block_hashes` covers its first `num_full_blocks` blocks (each hash is
        computed once and kept) and return that list itself (it may be longer)."""
        bs = self.block_size
        while len(seq.block_hashes) < num_full_blocks:
            i = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if i else seq.cache_salt
            seq.block_hashes.append(chain_hash(parent, seq.token_ids[i * bs : (i + 1) * bs]))
        return seq.block_hashes

    def lookup_prefix(self, seq: Sequence) -> list[int]:
        """Blocks already holding seq's leading full blocks. The last token is always left to
        compute, since the step that computes it is the one that samples."""
        if not self.enable_prefix_caching:
            return []
        hit = []
        full = (seq.num_tokens - 1) // self.block_size
        for h in self._hash_blocks(seq, full)[:full]:
            block = self.cached.get(h)
            if block is None:
                break
            hit.append(block)
        return hit

    def first_missing_hash(self, seq: Sequence, hit: list[int]) -> bytes | None:
        """The hash of the full block right after `hit` (lookup_prefix's answer for seq), or
        None when there is none to look up (no prefix caching, or only the last token left)."""
        if not self.enable_prefix_caching or len(hit) >= (seq.num_tokens - 1) // self.block_size:
            return None
        return self._hash_blocks(seq, len(hit) + 1)[len(hit)]

    def prompt_hashes_in_flight(self, seq: Sequence) -> list[bytes]:
        """Hashes of the full prompt blocks a running `seq` has yet to compute: they will be in
        the prefix cache once it has (empty after its prompt, or without prefix caching)."""
        if not self.enable_prefix_caching or seq.prompt_computed:
            return []
        full = seq.prompt_len // self.block_size
        return self._hash_blocks(seq, full)[seq.num_computed_tokens // self.block_size : full]

    # ---- allocation ------------------------------------------------------------------
    def admit(self, seq: Sequence, hit: list[int], num_tokens: int) -> bool:
        """Give a new (or preempted) sequence its cached prefix and room for `num_tokens`
        tokens; all or nothing. Sets num_computed_tokens to the cached length."""
        fresh_hits = sum(1 for b in hit if self.ref_cnt[b] == 0)  # these leave the free queue
        needed = -(-num_tokens // self.block_size) - len(hit)
        if needed + fresh_hits > len(self.free):
            return False
        for b in hit:
            self._ref(b)
        seq.block_ids = list(hit)
        seq.num_computed_tokens = len(hit) * self.block_size
        self.queries += seq.num_tokens
        self.hits += seq.num_computed_tokens
        return self.allocate(seq, num_tokens)

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow seq's block table to hold `num_tokens` tokens; all or nothing."""
        needed = self.blocks_needed(seq, num_tokens)
        if needed > len(self.free):
            return False
        for _ in range(needed):
            block, _ = self.free.popitem(last=False)
            old = self.block_hash[block]
            if old is not None:  # evict: its contents are about to be overwritten
                if self.cached.get(old) == block:
                    del self.cached[old]
                self.block_hash[block] = None
            self.ref_cnt[block] = 1
            seq.block_ids.append(block)
        return True

    def _ref(self, block: int) -> None:
        if self.ref_cnt[block] == 0:
            del self.free[block]
        self.ref_cnt[block] += 1

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Publish seq's newly computed full blocks under their prefix hashes."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        hashes = self._hash_blocks(seq, full)
        for i in range(seq.num_published_blocks, full):
            block = seq.block_ids[i]
            if self.block_hash[block] is not None:
                continue
            h = hashes[i]
            self.block_hash[block] = h
            self.cached.setdefault(h, block)  # a twin computed at the same time stays private
        seq.num_published_blocks = max(seq.num_published_blocks, full)

    def free_seq(self, seq: Sequence) -> None:
        """Drop seq's references (all at once). Tail blocks are queued for eviction before the
        prefix blocks, which are the ones other requests are likely to share."""
        for block in reversed(seq.block_ids):
            self.ref_cnt[block] -= 1
            if self.ref_cnt[block] == 0:
                self.free[block] = None
                if self.block_hash[block] is None:  # nothing worth keeping: reuse it first
                    self.free.move_to_end(block, last=False)
        seq.block_ids = []
        seq.num_computed_tokens = 0
        seq.num_published_blocks = 0
