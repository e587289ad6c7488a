"""The native paged decode-attention kernel against the PyTorch path on random caches."""

from __future__ import annotations

import pytest
import torch

from fleetlm.engine.attention import AttentionMetadata, DecodeRows, kv_context_mask, paged_attention
from fleetlm.engine.kernels import load_paged_decode


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    from fleetlm.models.embedded import default_cache_dir

    op = load_paged_decode(default_cache_dir() / "kernels")
    if op is None:
        pytest.fail("the CPU kernel did not build (a C++ compiler and ninja are required)")
    return op


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("window", [None, 5])
def test_kernel_matches_torch_path(kernel, dtype, tol, window):
    g = torch.Generator().manual_seed(0)
    num_blocks, bs, n_kv, group, d = 40, 4, 2, 3, 32
    k_cache = torch.randn(num_blocks, bs, n_kv, d, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, bs, n_kv, d, generator=g).to(dtype)
    lens = [1, 7, 13, 4, 22]
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables, used = [], 0
    for n in lens:
        nb = -(-n // bs)
        tables.append(perm[used: used + nb])
        used += nb
    width = max(map(len, tables))
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    q = torch.randn(len(lens), n_kv * group, d, generator=g).to(dtype)
    pos = torch.tensor(lens) - 1
    # new tokens' k/v are already in the cache: write them back as the "new" values
    k_new = torch.stack([k_cache[t[(n - 1) // bs], (n - 1) % bs] for t, n in zip(tables, lens)])
    v_new = torch.stack([v_cache[t[(n - 1) // bs], (n - 1) % bs] for t, n in zip(tables, lens)])
    slots = torch.tensor([t[(n - 1) // bs] * bs + (n - 1) % bs for t, n in zip(tables, lens)])
    windows = {"x": window}

    def run(op):
        rows = DecodeRows(torch.arange(len(lens)), bt, ctx_lens=pos + 1, windows=windows, kernel=op)
        if op is None:
            rows.masks = {"x": kv_context_mask(pos, width * bs, window)[:, None, None, :]}
        meta = AttentionMetadata(slot_mapping=slots, chunks=[], decode=rows)
        return paged_attention(q, k_new, v_new, (k_cache.clone(), v_cache.clone()), meta,
                               layer_type="x", scale=d**-0.5)

    ref, ours = run(None), run(kernel)
    assert (ours.float() - ref.float()).abs().max().item() <= tol


def test_a_build_lock_left_by_a_killed_process_is_cleared(tmp_path):
    import os
    import time

    from fleetlm.engine.kernels import clear_stale_lock

    lock = tmp_path / "lock"
    lock.touch()
    assert not clear_stale_lock(tmp_path) and lock.exists()  # fresh: another process is building
    old = time.time() - 3600
    os.utime(lock, (old, old))
    assert clear_stale_lock(tmp_path) and not lock.exists()  # an hour old: nobody holds it
    assert not clear_stale_lock(tmp_path)
