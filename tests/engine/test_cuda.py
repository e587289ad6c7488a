"""The engine on a CUDA device against `transformers` (run on the CPU in fp32), with the Triton
paged-attention kernels and with PyTorch SDPA. Skipped without a CUDA device; on one, the rest
of tests/engine also runs on CUDA (device "auto"), with the Triton kernels where triton imports.
`benchmarks/gpu_check.sh` runs these."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fleetlm import LLM, SamplingParams
from tests.engine.test_correctness import assert_greedy_matches_transformers, prompts_of, record_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
BACKENDS = ["triton", "torch"] if importlib.util.find_spec("triton") else ["torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("budget", [512, 7])  # 7: prompts are chunked over several steps
def test_logits_and_greedy_match_transformers_on_cuda(tiny_family, monkeypatch, budget, backend):
    name, folder = tiny_family
    seen = record_logits(monkeypatch)
    llm = LLM(str(folder), device="cuda", dtype="float32", max_num_batched_tokens=budget, attention_backend=backend)
    assert (llm.engine.runner.chunk_kernel is not None) == (backend == "triton")
    assert_greedy_matches_transformers(llm, folder, prompts_of(3, [5, 23, 40]), 12, seen, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefix_cache_hit_and_batch_of_16_on_cuda(tiny_gemma, backend):
    """Chunks over cached blocks (a prefix hit) and a full decode batch give the outputs of
    the same requests alone and uncached."""
    llm = LLM(str(tiny_gemma), device="cuda", dtype="float32", block_size=4, attention_backend=backend)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    shared = prompts_of(1, [30], seed=2)[0]
    first = llm.generate(prompt_token_ids=[shared + [10, 11]], sampling_params=params)[0]
    second = llm.generate(prompt_token_ids=[shared + [10, 11]], sampling_params=params)[0]
    assert second.num_cached_tokens == 28 and second.outputs[0].token_ids == first.outputs[0].token_ids
    prompts = prompts_of(16, [3 + 5 * i for i in range(16)], seed=1)
    batch = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    for i in (0, 7, 15):
        alone = llm.generate(prompt_token_ids=[prompts[i]], sampling_params=params)[0]
        assert alone.outputs[0].token_ids == batch[i].outputs[0].token_ids


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton is not installed")
def test_bf16_triton_and_sdpa_agree_on_cuda(tiny_family, monkeypatch):
    """bf16, the serving dtype: the first two steps' logits (a prompt through the chunk kernel,
    then a decode) stay within bf16 rounding of SDPA's."""
    name, folder = tiny_family
    prompts = prompts_of(4, [7, 19, 33, 60], seed=5)
    seen = record_logits(monkeypatch)
    firsts = {}
    for backend in ("triton", "torch"):
        seen.clear()
        llm = LLM(str(folder), device="cuda", dtype="bfloat16", attention_backend=backend, block_size=8)
        outs = llm.generate(prompt_token_ids=prompts,
                            sampling_params=SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
        firsts[backend] = [(o.outputs[0].token_ids[0], torch.stack(seen[o.request_id])) for o in outs]
    for (tok, ours), (ref_tok, ref) in zip(firsts["triton"], firsts["torch"]):
        rows = 2 if tok == ref_tok else 1  # a near-tie may pick another first token: then its decode differs
        assert (ours[:rows] - ref[:rows]).abs().max().item() <= 0.03 * ref.abs().max().item(), name
