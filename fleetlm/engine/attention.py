"""Paged attention over the engine's KV cache, in plain PyTorch.

Contract: the model runner builds one `AttentionMetadata` per step; every attention layer
calls `paged_attention` with its own cache tensors and that metadata. New tokens' keys and
values are written into their cache slots first, then each query attends to its sequence's
whole context (cached + new) read back through the block table.

Rows come in two kinds, told apart by their query length only (no phases): rows with one
new token are batched into a single SDPA call; rows with several new tokens (a prompt
chunk) get one call each, and there are few of them per step because of the token budget.
A kernel that reads the paged cache in place (native CPU, Triton on CUDA: see
`kernels/`) replaces either call when the runner sets one; masks are then not built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class ChunkRow:
    """A sequence with several new tokens this step (a prompt chunk, or a recompute)."""

    start: int  # first index of its tokens in the flat batch
    end: int  # one past its last token
    num_computed: int  # tokens already in the cache before this step
    block_table: torch.Tensor  # (num_blocks,) int64, covers num_computed + (end - start)
    masks: dict[str, torch.Tensor | None] = field(default_factory=dict)  # layer type -> (q, L) bool
    # With a kernel, keys are read in place and `masks` stays empty: kernel(q (n, Hq, D), k_cache,
    # v_cache, block_table, num_computed, window (0: none), scale, out=(n, Hq, D)), windows:
    # layer type -> sliding window or None
    kernel: Callable | None = None
    windows: dict[str, int | None] = field(default_factory=dict)


@dataclass
class DecodeRows:
    """All sequences with exactly one new token this step, attended in one batched call."""

    token_index: torch.Tensor  # (B,) int64, positions of their tokens in the flat batch
    block_tables: torch.Tensor  # (B, max_blocks) int64, padded with block 0
    ctx_lens: torch.Tensor  # (B,) int64, keys each query sees (its position + 1)
    windows: dict[str, int | None]  # layer type -> sliding window
    # With the native kernel, keys are read in place and `masks` stays empty; otherwise
    # layer type -> (B, 1, 1, max_blocks * block_size) bool for the gathered, padded keys.
    kernel: Callable | None = None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (T,) int64 flat cache slot of each new token
    chunks: list[ChunkRow]
    decode: DecodeRows | None


def kv_context_mask(q_pos: torch.Tensor, key_len: int, window: int | None) -> torch.Tensor:
    """Boolean mask (*q_pos.shape, key_len): key j is visible from query position p when
    j <= p and (sliding layers) p - j < window, the convention of `transformers`."""
    keys = torch.arange(key_len, device=q_pos.device)
    mask = keys <= q_pos[..., None]
    if window is not None:
        mask &= keys > q_pos[..., None] - window
    return mask


def paged_attention(
    q: torch.Tensor,  # (T, Hq, D)
    k: torch.Tensor,  # (T, Hkv, D)
    v: torch.Tensor,  # (T, Hkv, D)
    cache: tuple[torch.Tensor, torch.Tensor],  # each (num_blocks, block_size, Hkv, D)
    meta: AttentionMetadata,
    *,
    layer_type: str,
    scale: float,
) -> torch.Tensor:  # (T, Hq, D)
    k_cache, v_cache = cache
    num_blocks, block_size, n_kv, head_dim = k_cache.shape
    n_q = q.shape[1]
    group = n_q // n_kv
    k_cache.view(-1, n_kv, head_dim).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, n_kv, head_dim).index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)

    for row in meta.chunks:
        if row.kernel is not None:
            row.kernel(q[row.start : row.end], k_cache, v_cache, row.block_table, row.num_computed,
                       row.windows[layer_type] or 0, scale, out=out[row.start : row.end])
            continue
        n = row.end - row.start
        if row.num_computed == 0:
            kk, vv = k[row.start : row.end], v[row.start : row.end]
        else:  # read the cached context back through the block table
            length = row.num_computed + n
            kk = k_cache[row.block_table].view(-1, n_kv, head_dim)[:length]
            vv = v_cache[row.block_table].view(-1, n_kv, head_dim)[:length]
        mask = row.masks.get(layer_type)
        o = F.scaled_dot_product_attention(
            q[row.start : row.end].transpose(0, 1)[None],  # (1, Hq, n, D)
            kk.transpose(0, 1)[None],
            vv.transpose(0, 1)[None],
            attn_mask=None if mask is None else mask[None, None],
            is_causal=mask is None,
            scale=scale,
            enable_gqa=group > 1,
        )
        out[row.start : row.end] = o[0].transpose(0, 1)

    dec = meta.decode
    if dec is not None:
        b = dec.token_index.shape[0]
        # Grouped-query trick: the `group` query heads sharing a KV head become `group` query
        # rows of that head, so the cache is never expanded to Hq heads.
        qd = q.index_select(0, dec.token_index).view(b, n_kv, group, head_dim)
        if dec.kernel is not None:
            o = dec.kernel(qd, k_cache, v_cache, dec.block_tables, dec.ctx_lens,
                           dec.windows[layer_type] or 0, scale)
            out.index_copy_(0, dec.token_index, o.reshape(b, n_q, head_dim))
            return out
        kk = k_cache[dec.block_tables].view(b, -1, n_kv, head_dim).transpose(1, 2)
        vv = v_cache[dec.block_tables].view(b, -1, n_kv, head_dim).transpose(1, 2)
        o = F.scaled_dot_product_attention(qd, kk, vv, attn_mask=dec.masks[layer_type], scale=scale)
        out.index_copy_(0, dec.token_index, o.reshape(b, n_q, head_dim))
    return out
