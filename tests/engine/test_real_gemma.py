"""The real embedded model (dequantized gemma-3-270m) against transformers, same weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow

PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "Water boils at a temperature of",
]


@pytest.fixture(scope="module")
def gemma_folder():
    from fleetlm.models.embedded import ensure_default_model

    return ensure_default_model()


def test_greedy_matches_transformers_first_32_tokens(gemma_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fleetlm import LLM, SamplingParams

    tok = AutoTokenizer.from_pretrained(gemma_folder)
    hf = AutoModelForCausalLM.from_pretrained(gemma_folder, dtype=torch.float32).eval()
    expected = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = tok(p, return_tensors="pt").input_ids
            out = hf.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
            expected.append(out[0, ids.shape[1]:].tolist())
    del hf
    llm = LLM(str(gemma_folder), dtype="float32")
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=32, temperature=0, ignore_eos=True))
    for p, out, ref in zip(PROMPTS, outs, expected):
        assert out.prompt_token_ids == tok(p).input_ids
        assert out.outputs[0].token_ids == ref, p
    assert "Paris" in outs[0].outputs[0].text


def test_bf16_engine_speaks_english(gemma_folder):
    from fleetlm import LLM, SamplingParams

    llm = LLM("gemma-3-270m", dtype="bfloat16")
    out = llm.generate("The Eiffel Tower is located in the city of", SamplingParams(max_tokens=8, temperature=0))[0]
    assert "Paris" in out.outputs[0].text


def test_fleet_generate_cli_prints_a_completion(gemma_folder):
    run = subprocess.run([sys.executable, "-m", "fleetlm.cli", "generate", "--prompt",
                          "The Eiffel Tower is located in the city of", "--max-tokens", "8"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Paris" in run.stdout
    assert "tokens" in run.stderr  # the summary line
