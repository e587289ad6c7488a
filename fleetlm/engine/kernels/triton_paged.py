"""Paged attention in Triton, for CUDA: keys and values read in place from the block-paged
KV cache through the block tables (no gather into contiguous tensors, no padding masks).

Two ops, plugged in where `attention.paged_attention` takes a kernel:

- `paged_decode_attention(q, k_cache, v_cache, block_tables, ctx_lens, window, scale)`: one
  query token per row, the contract of the native CPU kernel. q (B, Hkv, G, D) with G query
  heads per KV head; caches (num_blocks, block_size, Hkv, D); block_tables (B, max_blocks)
  int64, padded; ctx_lens (B,) int64, keys each query sees (its position + 1); window > 0
  limits each query to its last `window` keys (0: none). Returns (B, Hkv, G, D) in q's dtype.
- `paged_chunk_attention(q, k_cache, v_cache, block_table, num_computed, window, scale, out=None)`:
  one sequence with n new tokens at positions num_computed .. num_computed + n - 1, causal
  over its cached and new keys (the new ones are already written to the cache). q (n, Hq, D);
  block_table (num_blocks,) int64 covering num_computed + n positions. Returns (n, Hq, D),
  written into `out` when given.

Key j is visible from query position p when j <= p and, with a window, p - j < window (the
convention of `transformers`). Softmax is online (flash-attention style) in fp32; q . k and
p . v use `tl.dot` at IEEE precision, so fp32 caches are not rounded to tf32.

Works on fp32, bf16 and fp16, head_dim up to 256, any GQA group. Whether kernels run compiled
or in Triton's interpreter (numpy on the CPU, for tests without a GPU) is fixed per process:
TRITON_INTERPRET=1 must be set when triton is first imported (its own library is decorated
then, and the two modes do not mix). `INTERPRETED` records which mode this module got.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

INTERPRETED: bool = bool(knobs.runtime.interpret)  # read once: the @triton.jit below decided it
MAX_HEAD_DIM = 256


@triton.jit
def _mm(a, b, UPCAST: tl.constexpr):
    # Triton's interpreter multiplies bf16 tensors as their raw bits (it stores them as uint16):
    # there, operands are widened to fp32 first, which gives the same (exact) products with fp32
    # accumulation, as the compiled dot does
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _decode_kernel(Q, K, V, O, BT, LENS, scale, window,
                   s_qb, s_qh, s_qg, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, s_bt, s_ob, s_oh, s_og,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
                   BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr):
    # one program per (sequence, KV head): its G query heads share every key and value load
    b = tl.program_id(0)
    h = tl.program_id(1)
    length = tl.load(LENS + b)
    first = tl.where(window > 0, tl.maximum(length - window, 0), 0)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * s_qb + h * s_qh + offs_g[:, None] * s_qg + offs_d[None, :],
                mask=(offs_g[:, None] < GROUP) & d_ok[None, :], other=0.0)
    qk_scale = scale * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for start in range((first // BLOCK_N) * BLOCK_N, length, BLOCK_N):
        pos = start + offs_n
        valid = (pos >= first) & (pos < length)
        page = tl.load(BT + b * s_bt + pos // PAGE, mask=valid, other=0)
        slot = pos % PAGE
        k = tl.load(K + page[None, :] * s_kb + slot[None, :] * s_ks + h * s_kh + offs_d[:, None],
                    mask=valid[None, :] & d_ok[:, None], other=0.0)  # (BLOCK_D, BLOCK_N)
        s = _mm(q, k, UPCAST) * qk_scale  # (BLOCK_G, BLOCK_N), log2 units
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile holds a visible key
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + page[:, None] * s_vb + slot[:, None] * s_vs + h * s_vh + offs_d[None, :],
                    mask=valid[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, UPCAST)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(O + b * s_ob + h * s_oh + offs_g[:, None] * s_og + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=(offs_g[:, None] < GROUP) & d_ok[None, :])


@triton.jit
def _chunk_kernel(Q, K, V, O, BT, num_computed, n_new, scale, window,
                  s_qt, s_qh, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, s_ot, s_oh,
                  GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr):
    # one program per (tile of BLOCK_M new tokens, query head)
    tile = tl.program_id(0)
    hq = tl.program_id(1)
    h = hq // GROUP
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # token index within the chunk
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < n_new
    q_pos = num_computed + offs_m
    q = tl.load(Q + offs_m[:, None] * s_qt + hq * s_qh + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    # keys this tile can see: from its first query's window start to its last query (causal)
    end = num_computed + tl.minimum(tile * BLOCK_M + BLOCK_M, n_new)
    lo = tl.where(window > 0, tl.maximum(num_computed + tile * BLOCK_M - window + 1, 0), 0)
    oldest = tl.where(window > 0, q_pos - window, -1)  # (BLOCK_M,) last key position out of sight
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range((lo // BLOCK_N) * BLOCK_N, end, BLOCK_N):
        pos = start + offs_n
        valid = pos < end
        page = tl.load(BT + pos // PAGE, mask=valid, other=0)
        slot = pos % PAGE
        k = tl.load(K + page[None, :] * s_kb + slot[None, :] * s_ks + h * s_kh + offs_d[:, None],
                    mask=valid[None, :] & d_ok[:, None], other=0.0)
        s = _mm(q, k, UPCAST) * qk_scale  # (BLOCK_M, BLOCK_N)
        seen = valid[None, :] & (pos[None, :] <= q_pos[:, None]) & (pos[None, :] > oldest[:, None])
        s = tl.where(seen, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a query with no visible key in this tile yet (sliding window) keeps m = -inf: shift
        # by 0 instead, so exp2(-inf - -inf) never makes a NaN
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_shift[:, None])
        alpha = tl.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + page[:, None] * s_vb + slot[:, None] * s_vs + h * s_vh + offs_d[None, :],
                    mask=valid[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, UPCAST)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # padding rows (m_ok False) may see nothing
    tl.store(O + offs_m[:, None] * s_ot + hq * s_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def _tiles(head_dim: int) -> tuple[int, int]:
    """(block_d, keys per tile): head_dim 256 halves the key tile to stay within shared memory."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    return block_d, (32 if block_d > 128 else 64)


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if q.dtype != k_cache.dtype or k_cache.dtype != v_cache.dtype:
        raise ValueError(f"q, k_cache, v_cache must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {q.shape[-1]} > {MAX_HEAD_DIM} is not supported")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("the KV caches' last dimension must be contiguous")


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, ctx_lens: torch.Tensor, window: int,
                           scale: float) -> torch.Tensor:
    """(B, Hkv, G, D) attention of one query token per row over its paged context; see the
    module docstring for shapes."""
    _check(q, k_cache, v_cache)
    q = q if q.stride(-1) == 1 else q.contiguous()
    b, n_kv, group, head_dim = q.shape
    out = torch.empty_like(q)
    if b == 0:
        return out
    block_tables = block_tables.contiguous()
    block_d, block_n = _tiles(head_dim)
    _decode_kernel[(b, n_kv)](
        q, k_cache, v_cache, out, block_tables, ctx_lens, float(scale), int(window),
        q.stride(0), q.stride(1), q.stride(2), *k_cache.stride()[:3], *v_cache.stride()[:3],
        block_tables.stride(0), out.stride(0), out.stride(1), out.stride(2),
        GROUP=group, HEAD_DIM=head_dim, PAGE=k_cache.shape[1],
        BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_D=block_d, BLOCK_N=block_n, UPCAST=INTERPRETED)
    return out


def paged_chunk_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          block_table: torch.Tensor, num_computed: int, window: int, scale: float,
                          out: torch.Tensor | None = None) -> torch.Tensor:
    """(n, Hq, D) causal attention of one sequence's n new tokens over its paged context; see
    the module docstring for shapes. `out`, if given, is (n, Hq, D) and receives the result."""
    _check(q, k_cache, v_cache)
    q = q if q.stride(-1) == 1 else q.contiguous()
    n, n_q, head_dim = q.shape
    n_kv = k_cache.shape[2]
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(q.shape)} with a contiguous last dimension")
    if n == 0:
        return out
    block_d, block_n = _tiles(head_dim)
    block_m = 32 if block_d > 128 else 64
    _chunk_kernel[(triton.cdiv(n, block_m), n_q)](
        q, k_cache, v_cache, out, block_table.contiguous(), int(num_computed), n, float(scale), int(window),
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3], out.stride(0), out.stride(1),
        GROUP=n_q // n_kv, HEAD_DIM=head_dim, PAGE=k_cache.shape[1],
        BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_N=block_n, UPCAST=INTERPRETED)
    return out
