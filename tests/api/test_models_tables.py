"""Several local base models behind one endpoint: `[[model]]` tables in a fleet.toml, served
by `fleet serve --config` (a real subprocess), each with its own engine, listed in
/v1/models and answered under its own id (its adapters as `id:adapter`) by the real
`openai` client, with the same greedy text as its engine alone."""

from __future__ import annotations

import pytest

from fleetlm.engine.llm import LLM
from fleetlm.engine.sampling_params import SamplingParams
from tests.api.conftest import fleet_serve, free_port, stop_process, wait_healthy
from tests.engine.test_lora import make_adapter
from tests.tiny_models import make_tiny_model

# prompts each tiny random model answers with printable text (others give special tokens only)
PROMPTS = {"tiny-llama": "The harbour lights were", "tiny-qwen": "Once upon a time"}
PROMPT = PROMPTS["tiny-llama"]


def fleet_toml(llama, qwen, adapters) -> str:
    """Two tiny base models of different families; the Llama one with an adapters folder."""
    common = 'dtype = "float32"\nmax_model_len = 256\nkv_cache_memory_gb = 0.01\n'
    return (f'[[model]]\nid = "tiny-llama"\nmodel = "{llama}"\nadapters_dir = "{adapters}"\n{common}'
            f'[[model]]\nid = "tiny-qwen"\nmodel = "{qwen}"\n{common}')


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """(llama folder, qwen2 folder, adapters folder with `expert`, `expert2`, `expert3`, fleet.toml path)."""
    root = tmp_path_factory.mktemp("two-models")
    llama, qwen = make_tiny_model("llama", root / "llama"), make_tiny_model("qwen2", root / "qwen")
    make_adapter(llama, root / "adapters" / "expert", seed=5, rank=4)
    for k in (2, 3):  # for the Ray tests: adapters no other request has touched
        make_adapter(llama, root / "adapters" / f"expert{k}", seed=4 + k, rank=4)
    path = root / "fleet.toml"
    path.write_text(fleet_toml(llama, qwen, root / "adapters"))
    return llama, qwen, root / "adapters", path


def alone(folder, prompt: str, max_tokens: int) -> str:
    """Greedy text of the model's engine alone, in this process."""
    llm = LLM(str(folder), dtype="float32", max_model_len=256)
    return llm.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0))[0].outputs[0].text


@pytest.fixture(scope="module")
def served(two_models):
    port = free_port()
    proc = fleet_serve(None, port, "--config", str(two_models[3]))
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def client(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_both_models_listed_with_the_adapter(served):
    ids = {m.id for m in client(served).models.list().data}
    assert {"tiny-llama", "tiny-qwen", "tiny-llama:expert"} <= ids


@pytest.mark.parametrize("model, index", [("tiny-llama", 0), ("tiny-qwen", 1)])
def test_each_model_answers_as_its_engine_alone(served, two_models, model, index):
    oai = client(served)
    want = alone(two_models[index], PROMPTS[model], 12)
    assert want.strip()
    got = oai.completions.create(model=model, prompt=PROMPTS[model], max_tokens=12, temperature=0)
    assert got.model == model and got.choices[0].text == want
    streamed = oai.completions.create(model=model, prompt=PROMPTS[model], max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want


def test_the_adapter_is_routed_to_its_base(served):
    oai = client(served)
    base = oai.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=12, temperature=0)
    expert = oai.completions.create(model="tiny-llama:expert", prompt=PROMPT, max_tokens=12, temperature=0)
    assert expert.model == "tiny-llama:expert" and expert.choices[0].text != base.choices[0].text
    with pytest.raises(Exception, match="does not exist"):
        oai.completions.create(model="tiny-qwen:expert", prompt=PROMPT, max_tokens=4)
