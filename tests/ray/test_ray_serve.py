"""The fleet on Ray Serve, against `fleet serve` in one process on the same fleet.toml (two
tiny base models of different families, an adapter on one): the same /v1/models and the
same greedy text, streamed and not, through the real `openai` client; a replica killed
under load loses no request that had not started streaming and hangs none that had; /health
is degraded while a base model has no live replica."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from fleetlm.config import ServerConfig
from fleetlm.fleet_toml import load_fleet_toml
from tests.api.conftest import wait_healthy
from tests.api.test_models_tables import PROMPTS, client, served, two_models  # noqa: F401 (fixtures)

pytestmark = pytest.mark.ray

APP = "fleetlm-test"
RAY_TABLES = (f'\n[ray]\napp_name = "{APP}"\n'
              '[[ray.deployment]]\nname = "tiny-llama"\nnum_replicas = 2\nnum_cpus = 0.5\nmax_ongoing_requests = 8\n'
              '[[ray.deployment]]\nname = "tiny-qwen"\nnum_cpus = 0.5\n')
CHAT = [{"role": "user", "content": "Once upon a time"}]
MAX_TOKENS = 224  # the killed-replica test: long enough to be mid-stream at the kill, within 256 tokens


@pytest.fixture(scope="module")
def on_ray(ray_cluster, two_models):  # noqa: F811 (a fixture)
    """The two-model fleet.toml, plus a [ray] table, deployed on the shared test cluster."""
    from ray import serve

    from fleetlm.ray.run import deploy

    path = two_models[3].with_name("fleet-ray.toml")
    path.write_text(two_models[3].read_text() + RAY_TABLES)
    deploy(None, ServerConfig(port=ray_cluster.port), load_fleet_toml(str(path)))  # embeddings on
    wait_healthy(ray_cluster.base_url, timeout=120)
    yield ray_cluster.base_url
    serve.delete(APP)


def test_the_same_models_as_one_process(on_ray, served):  # noqa: F811
    """(The one-process server runs without embeddings; here they have their own deployment.)"""
    from fleetlm.models.embeddings import EMBEDDING_MODEL_ID

    assert sorted(m.id for m in client(on_ray).models.list().data) == \
        sorted([EMBEDDING_MODEL_ID] + [m.id for m in client(served).models.list().data])


def test_embeddings_from_the_embedder_deployment(on_ray):
    """Concurrent requests (batched together on the replica) get the local embedder's vectors."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from fleetlm.models.embeddings import EMBEDDING_MODEL_ID, Embedder

    texts = [["a lighthouse"], ["the harbour at night", "a ferry"], ["tide tables"], ["fog horn", "gulls"]]
    oai = client(on_ray)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda t: oai.embeddings.create(model=EMBEDDING_MODEL_ID, input=t), texts))
    local = Embedder()
    for t, answer in zip(texts, answers):
        got = torch.tensor([d.embedding for d in answer.data])
        assert torch.allclose(got, local.embed(t).vectors, atol=1e-4)
        assert answer.usage.prompt_tokens == sum(local.embed(t).token_counts)
    with pytest.raises(Exception, match="token ids must be ints"):
        oai.embeddings.create(model=EMBEDDING_MODEL_ID, input=[[10**9]])


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-qwen", "tiny-llama:expert"])
@pytest.mark.parametrize("stream", [False, True])
def test_the_same_greedy_text_as_one_process(on_ray, served, model, stream):  # noqa: F811
    prompt = PROMPTS[model.split(":")[0]]
    answers = []
    for base_url in (served, on_ray):
        oai = client(base_url)
        got = oai.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, stream=stream)
        text = "".join(c.choices[0].text for c in got if c.choices) if stream else got.choices[0].text
        chat = oai.chat.completions.create(model=model, messages=CHAT, max_tokens=12, temperature=0, stream=stream)
        said = "".join(c.choices[0].delta.content or "" for c in chat if c.choices) if stream \
            else chat.choices[0].message.content
        answers.append((text, said))
    assert answers[0] == answers[1] and answers[0][0]


def _routed(app_name: str) -> dict[str, dict[str, int]]:
    """Replica id -> requests per adapter it served, from both tiny-llama replicas."""
    from ray import serve

    handle = serve.get_deployment_handle("engine-tiny-llama", app_name)
    seen: dict[str, dict[str, int]] = {}
    for _ in range(80):  # each call lands on either replica
        replica, counts = handle.routed_adapters.remote().result()
        seen[replica] = counts
        if len(seen) == 2:
            break
    assert len(seen) == 2
    return seen


def test_each_adapter_sticks_to_the_replica_that_holds_it(on_ray):
    """Two adapters no request has used yet, each loaded by one request (on one of the two
    replicas), then, once Ray's routers have heard where, six more each, one after another:
    every one goes to the replica that holds its adapter (multiplexing)."""
    oai = client(on_ray)
    adapters = ("tiny-llama:expert2", "tiny-llama:expert3")
    for adapter in adapters:
        oai.completions.create(model=adapter, prompt=PROMPTS["tiny-llama"], max_tokens=2)
    time.sleep(3)  # replicas report the adapters they hold to Serve's routers asynchronously
    before = _routed(APP)
    for _ in range(6):
        for adapter in adapters:
            oai.completions.create(model=adapter, prompt=PROMPTS["tiny-llama"], max_tokens=2)
    after = _routed(APP)
    for adapter in adapters:
        holder = [r for r in before if before[r].get(adapter)]
        assert len(holder) == 1, (adapter, before)
        assert after[holder[0]][adapter] - before[holder[0]][adapter] == 6, (adapter, before, after)


def _kill_one_replica(deployment: str) -> str:
    import ray

    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a["name"].startswith(f"SERVE_REPLICA::{APP}#{deployment}#"))
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]


def _request(base_url: str, stream: bool, out: dict) -> None:
    """One long completion; `out`: status, chunks seen, the in-band error, its text."""
    body = {"model": "tiny-llama", "prompt": PROMPTS["tiny-llama"], "max_tokens": MAX_TOKENS, "temperature": 0,
            "ignore_eos": True, "stream": stream}
    out.update(chunks=0, error=None, text="")
    url = f"{base_url}/v1/completions"
    if not stream:
        r = httpx.post(url, json=body, timeout=60)
        out.update(status=r.status_code, text=r.json()["choices"][0]["text"] if r.status_code == 200 else r.text)
        return
    with httpx.stream("POST", url, json=body, timeout=60) as r:
        out["status"] = r.status_code
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    out["error"] = chunk["error"]
                    return
                out["chunks"] += 1
                out["text"] += chunk["choices"][0]["text"] if chunk["choices"] else ""


def test_a_replica_killed_under_load(on_ray):
    """Streams that had started end with an in-band error; every other request is answered
    in full (retried on the other replica); nothing hangs. The kill comes once every stream
    has started, so the streams the killed replica held (with 8 of them over two replicas,
    some) all end in-band."""
    want = client(on_ray).completions.create(model="tiny-llama", prompt=PROMPTS["tiny-llama"], max_tokens=MAX_TOKENS,
                                             temperature=0, extra_body={"ignore_eos": True}).choices[0].text
    streamed = [i % 3 != 0 for i in range(12)]
    results = [{} for _ in streamed]
    threads = [threading.Thread(target=_request, args=(on_ray, s, r)) for s, r in zip(streamed, results)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not all(r.get("chunks") for s, r in zip(streamed, results) if s) and time.monotonic() < deadline:
        time.sleep(0.02)
    _kill_one_replica("engine-tiny-llama")
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request hung"
    for s, r in zip(streamed, results):
        assert r["status"] == 200, r
        if r["error"] is not None:  # only a stream that had started may end this way
            assert s and r["chunks"] > 0 and r["error"]["code"] == "replica_lost", r
        else:
            assert r["text"] == want, r
    assert any(r["error"] for r in results), "the killed replica served no stream"


def test_health_is_degraded_while_a_model_has_no_live_replica(on_ray):
    _kill_one_replica("engine-tiny-qwen")
    seen, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline and not any(s == 503 for s, _ in seen):
        r = httpx.get(f"{on_ray}/health", timeout=5)
        seen.append((r.status_code, r.text))
        time.sleep(0.1)
    assert any(s == 503 and "tiny-qwen: no live replica" in t for s, t in seen), seen[-3:]
    wait_healthy(on_ray, timeout=90)  # Ray replaced it
    got = client(on_ray).completions.create(model="tiny-qwen", prompt=PROMPTS["tiny-qwen"], max_tokens=4)
    assert got.model == "tiny-qwen"


def test_a_local_cluster_gets_a_cpu_for_every_replica_asked_for():
    pytest.importorskip("ray")
    from fleetlm.deploy_config import ModelConfig, RayConfig
    from fleetlm.ray.deploy import cpus_asked

    specs = [ModelConfig.from_dict({"id": "a", "model": "m"}), ModelConfig.from_dict({"id": "b", "model": "m"})]
    ray = RayConfig(deployment=[{"name": "a", "min_replicas": 1, "max_replicas": 3, "num_cpus": 2},
                                {"name": "gateway", "num_replicas": 2}])
    assert cpus_asked(specs, ray) == pytest.approx(2 * 0.1 + 0.5 + 3 * 2 + 1)  # gateway, embedder, a, b
