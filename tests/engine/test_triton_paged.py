"""The Triton paged-attention kernels against the PyTorch SDPA path, through the same
`paged_attention` hook the engine uses: compiled on CUDA where a GPU is present, else in
Triton's interpreter on the CPU (every machine with triton installed, CI included).

The interpreter is a per-process choice made when triton is first imported: tests/conftest.py
sets TRITON_INTERPRET=1 on machines without a GPU before any test imports triton.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import fleetlm.engine.kernels as kernels
from fleetlm import LLM
from fleetlm.engine.attention import AttentionMetadata, ChunkRow, DecodeRows, kv_context_mask, paged_attention
from tests.engine.test_correctness import assert_greedy_matches_transformers, prompts_of, record_logits

NO_TRITON = importlib.util.find_spec("triton") is None


@pytest.fixture(scope="module")
def target():
    """(kernel module, device): compiled on CUDA, or interpreted on the CPU."""
    if NO_TRITON:
        pytest.skip("triton is not installed (pip install 'fleetlm[gpu]'): the Triton kernels are not tested")
    from fleetlm.engine.kernels import triton_paged

    if torch.cuda.is_available():
        return triton_paged, torch.device("cuda")
    if not triton_paged.INTERPRETED:
        pytest.fail("no GPU and triton is not in interpreter mode: something imported triton before "
                    "tests/conftest.py set TRITON_INTERPRET=1 (or the environment set it to 0)")
    return triton_paged, torch.device("cpu")


TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def paged_cache(num_blocks, block_size, n_kv, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(num_blocks, block_size, n_kv, d, generator=g).to(dtype).to(device)
    v = torch.randn(num_blocks, block_size, n_kv, d, generator=g).to(dtype).to(device)
    return k, v, torch.randperm(num_blocks, generator=g).tolist()


def tables_for(lens, block_size, perm):
    """Each sequence's block ids, taken in a shuffled order so no table is contiguous."""
    tables, used = [], 0
    for n in lens:
        nb = -(-n // block_size)
        tables.append(perm[used : used + nb])
        used += nb
    return tables


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d,n_kv,group", [(64, 2, 1), (64, 2, 2), (256, 1, 4)])
@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("lens", [[9], [1, 8, 9, 16, 17, 41]])  # block size 8: across boundaries
def test_decode_matches_sdpa(target, dtype, d, n_kv, group, window, lens):
    module, dev = target
    bs = 8
    k_cache, v_cache, perm = paged_cache(40, bs, n_kv, d, dtype, dev)
    tables = tables_for(lens, bs, perm)
    width = max(map(len, tables))
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=dev)
    pos = torch.tensor(lens, device=dev) - 1
    q = torch.randn(len(lens), n_kv * group, d, generator=torch.Generator().manual_seed(1)).to(dtype).to(dev)
    # the new tokens' keys are the ones already in the cache at their slots: write them back as they are
    slots = torch.tensor([t[p // bs] * bs + p % bs for t, p in zip(tables, pos.tolist())], device=dev)
    k_new = k_cache.view(-1, n_kv, d)[slots]
    v_new = v_cache.view(-1, n_kv, d)[slots]

    def run(kernel):
        rows = DecodeRows(torch.arange(len(lens), device=dev), bt, ctx_lens=pos + 1, windows={"x": window},
                          kernel=kernel)
        if kernel is None:
            rows.masks = {"x": kv_context_mask(pos, width * bs, window)[:, None, None, :]}
        meta = AttentionMetadata(slot_mapping=slots, chunks=[], decode=rows)
        return paged_attention(q, k_new, v_new, (k_cache.clone(), v_cache.clone()), meta,
                               layer_type="x", scale=d**-0.5)

    ref, ours = run(None), run(module.paged_decode_attention)
    assert (ours.float() - ref.float()).abs().max().item() <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d,n_kv,group", [(64, 2, 1), (64, 2, 2), (256, 1, 4)])
@pytest.mark.parametrize("window", [None, 6])
def test_chunks_and_decodes_in_one_step_match_sdpa(target, dtype, d, n_kv, group, window):
    """A mixed step: fresh prompts, chunks over cached context (prefix hits, later chunks) and
    decode rows, all in one flat batch, as the engine's runner builds it."""
    module, dev = target
    bs = 8
    k_cache, v_cache, perm = paged_cache(60, bs, n_kv, d, dtype, dev, seed=2)
    # (tokens already cached, new tokens this step): 1 new token = a decode row
    rows = [(0, 13), (5, 20), (16, 40), (30, 3), (22, 1), (7, 1), (0, 70)]
    tables = tables_for([c + n for c, n in rows], bs, perm)
    g = torch.Generator().manual_seed(3)
    total = sum(n for _, n in rows)
    q = torch.randn(total, n_kv * group, d, generator=g).to(dtype).to(dev)
    k = torch.randn(total, n_kv, d, generator=g).to(dtype).to(dev)
    v = torch.randn(total, n_kv, d, generator=g).to(dtype).to(dev)
    slots, starts, start = [], [], 0
    for (c, n), t in zip(rows, tables):
        slots += [t[p // bs] * bs + p % bs for p in range(c, c + n)]
        starts.append(start)
        start += n
    slots = torch.tensor(slots, device=dev)
    dec = [i for i, (_, n) in enumerate(rows) if n == 1]
    width = max(len(tables[i]) for i in dec)
    dec_pos = torch.tensor([rows[i][0] for i in dec], device=dev)

    def run(chunk_kernel, decode_kernel):
        chunks = []
        for (c, n), t, s in zip(rows, tables, starts):
            if n == 1:
                continue
            bt = torch.tensor(t, device=dev)
            if chunk_kernel is not None:
                chunks.append(ChunkRow(s, s + n, c, bt, kernel=chunk_kernel, windows={"x": window}))
            else:
                mask = kv_context_mask(torch.arange(c, c + n, device=dev), c + n, window)
                chunks.append(ChunkRow(s, s + n, c, bt, {"x": mask}))
        drows = DecodeRows(torch.tensor([starts[i] for i in dec], device=dev),
                           torch.tensor([tables[i] + [0] * (width - len(tables[i])) for i in dec], device=dev),
                           ctx_lens=dec_pos + 1, windows={"x": window}, kernel=decode_kernel)
        if decode_kernel is None:
            drows.masks = {"x": kv_context_mask(dec_pos, width * bs, window)[:, None, None, :]}
        meta = AttentionMetadata(slot_mapping=slots, chunks=chunks, decode=drows)
        return paged_attention(q, k, v, (k_cache.clone(), v_cache.clone()), meta, layer_type="x", scale=d**-0.5)

    ref = run(None, None)
    ours = run(module.paged_chunk_attention, module.paged_decode_attention)
    assert (ours.float() - ref.float()).abs().max().item() <= TOL[dtype]


def test_engine_with_triton_kernels_matches_transformers(target, tiny_family, monkeypatch):
    """The whole engine with attention_backend="triton", in fp32, against transformers."""
    module, dev = target
    name, folder = tiny_family
    seen = record_logits(monkeypatch)
    # a budget of 8 tokens chunks the longer prompt over steps beside the other's decodes, and
    # past Gemma's 8-token sliding window
    llm = LLM(str(folder), dtype="float32", max_num_batched_tokens=8, attention_backend="triton",
              block_size=8, device=dev.type)
    assert llm.engine.runner.chunk_kernel is module.paged_chunk_attention
    assert_greedy_matches_transformers(llm, folder, prompts_of(2, [5, 30]), 6, seen, name)


def test_triton_backend_says_why_it_cannot_run(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(kernels, "load_triton_paged", lambda: None)
    with pytest.raises(RuntimeError, match="triton is not installed"):
        kernels.attention_kernels("triton", cpu, torch.float32, Path("unused"))
    assert kernels.attention_kernels("auto", torch.device("cuda"), torch.bfloat16, Path("unused")) == (None, None)

    class Compiled:  # the kernels of a normal import: compiled for CUDA, not interpreted
        INTERPRETED = False

    monkeypatch.setattr(kernels, "load_triton_paged", lambda: Compiled)
    with pytest.raises(RuntimeError, match="need a CUDA device"):
        kernels.attention_kernels("triton", cpu, torch.float32, Path("unused"))


def test_auto_falls_back_to_sdpa_where_triton_cannot_run(target, monkeypatch):
    module, dev = target
    assert kernels._triton_runs(module, dev, torch.float32)

    class Broken:  # imports, but its kernels fail (e.g. no C compiler for Triton's launcher)
        INTERPRETED = True

        @staticmethod
        def paged_decode_attention(*args):
            raise RuntimeError("cannot compile")

    monkeypatch.setattr(kernels, "load_triton_paged", lambda: Broken)
    assert kernels.attention_kernels("auto", torch.device("cuda"), torch.bfloat16, Path("unused")) == (None, None)
