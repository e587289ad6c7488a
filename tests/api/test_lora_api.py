"""LoRA adapters over real HTTP with the openai client: `tiny:<adapter>` ids, a watched
adapters folder, runtime load/unload (vLLM's endpoints), errors, and no lost requests."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import openai
import pytest

from fleetlm import LLM, SamplingParams
from fleetlm.engine.lora import LoRARequest
from tests.api.conftest import start_server
from tests.engine.test_lora import make_adapter

PROMPT = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def adapter_root(tiny_gemma, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    for i, name in enumerate(["alpha", "beta"]):
        make_adapter(tiny_gemma, root / name, seed=20 + i, rank=4 + 4 * i)
    spare = tmp_path_factory.mktemp("spare")
    make_adapter(tiny_gemma, spare / "gamma", seed=30, rank=8, targets=("o_proj", "down_proj"))
    return root, spare


@pytest.fixture(scope="module")
def lora_server(tiny_gemma, adapter_root):
    root, _ = adapter_root
    running, server, thread = start_server(tiny_gemma, engine_kw={"enable_lora": True, "max_loras": 2},
                                           adapters_dir=str(root), adapter_rescan_s=0.0)
    yield running
    server.should_exit = True
    thread.join(timeout=30)


def chat(client, model: str, **kw):
    return client.chat.completions.create(model=model, messages=PROMPT, max_tokens=12, temperature=0, **kw)


def test_adapters_are_model_ids_and_match_the_engine(lora_server, tiny_gemma, adapter_root):
    client = lora_server.client()
    ids = {m.id for m in client.models.list().data}
    assert {"tiny", "tiny:alpha", "tiny:beta"} <= ids
    base, alpha, beta = (chat(client, m) for m in ("tiny", "tiny:alpha", "tiny:beta"))
    assert alpha.model == "tiny:alpha"
    assert len({base.choices[0].message.content, alpha.choices[0].message.content,
                beta.choices[0].message.content}) == 3
    # the same adapter through the offline engine gives the same text
    root, _ = adapter_root
    llm = LLM(str(tiny_gemma), dtype="float32", enable_lora=True)
    prompt = llm.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    offline = llm.generate(prompt, SamplingParams(max_tokens=12, temperature=0),
                           lora_request=LoRARequest("alpha", str(root / "alpha")))[0]
    assert offline.outputs[0].text == alpha.choices[0].message.content
    stream = client.chat.completions.create(model="tiny:beta", messages=PROMPT, max_tokens=12, temperature=0,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        beta.choices[0].message.content
    done = client.completions.create(model="tiny:alpha", prompt="abc", max_tokens=5, temperature=0)
    assert done.model == "tiny:alpha" and done.usage.completion_tokens == 5


def test_new_folder_is_served_without_restart(lora_server, tiny_gemma, adapter_root):
    root, spare = adapter_root
    client = lora_server.client()
    shutil.copytree(spare / "gamma", root / "delta")
    assert "tiny:delta" in {m.id for m in client.models.list().data}
    assert chat(client, "tiny:delta").choices[0].finish_reason == "length"


def test_errors_are_openai_shaped(lora_server, tmp_path, tiny_gemma):
    client = lora_server.client()
    with pytest.raises(openai.NotFoundError):
        chat(client, "tiny:nope")
    url = lora_server.base_url
    r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path / "none")})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    bad = make_adapter(tiny_gemma, tmp_path / "bad", seed=1)
    (tmp_path / "bad" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": bad.path})
    assert r.status_code == 400 and "unreadable adapter_model.safetensors" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "../x", "lora_path": bad.path})
    assert r.status_code == 400
    r = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "never-loaded"})
    assert r.status_code == 404
    assert "tiny:bad" not in {m.id for m in client.models.list().data}
    assert chat(client, "tiny").choices[0].finish_reason == "length"  # still serving


def test_load_and_unload_while_requests_run_lose_nothing(lora_server, adapter_root):
    _, spare = adapter_root
    client = lora_server.client(timeout=120)
    url = lora_server.base_url
    results, errors = [], []

    def worker(model: str, stream: bool):
        try:
            if stream:
                chunks = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=40,
                                                        temperature=0.8, stream=True,
                                                        stream_options={"include_usage": True})
                usage = [c.usage for c in chunks if c.usage is not None][-1]
                results.append(usage.completion_tokens)
            else:
                r = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=40, temperature=0.8)
                results.append(r.usage.completion_tokens)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(m, i % 2 == 0))
               for i, m in enumerate(["tiny:alpha", "tiny:beta", "tiny", "tiny:alpha"] * 3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert httpx.post(f"{url}/v1/load_lora_adapter",
                      json={"lora_name": "gamma", "lora_path": str(spare / "gamma")}).status_code == 200
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "alpha"}).status_code == 200
    gamma = chat(client, "tiny:gamma")
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 12 and all(n >= 1 for n in results)
    assert gamma.choices[0].finish_reason == "length"
    ids = {m.id for m in client.models.list().data}
    assert "tiny:gamma" in ids and "tiny:alpha" not in ids
    with pytest.raises(openai.NotFoundError):
        chat(client, "tiny:alpha")
    assert lora_server.llm.engine.lora_pool.refs == [0] * 3  # every slot released
