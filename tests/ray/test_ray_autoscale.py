"""Autoscaling from `[[ray.deployment]]` bounds: under a queue the engine deployment grows
from 1 replica to 2, and back to 1 once the load is gone."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from fleetlm.config import ServerConfig
from fleetlm.fleet_toml import load_fleet_toml
from tests.api.conftest import wait_healthy
from tests.api.test_models_tables import PROMPTS, two_models  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "fleetlm-autoscale"
RAY_TABLES = (f'\n[ray]\napp_name = "{APP}"\n[[ray.deployment]]\nname = "tiny-llama"\nmin_replicas = 1\n'
              'max_replicas = 2\ntarget_ongoing_requests = 1\nupscale_delay_s = 0\ndownscale_delay_s = 2\n'
              'num_cpus = 0.5\nmax_ongoing_requests = 4\n')


def running(deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    d = app.deployments.get(deployment) if app else None
    return d.replica_states.get("RUNNING", 0) if d else 0


def until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_autoscaling_one_to_two_and_back(ray_cluster, two_models):  # noqa: F811
    from ray import serve

    from fleetlm.ray.run import deploy

    path = two_models[3].with_name("fleet-autoscale.toml")
    path.write_text(two_models[3].read_text().split("[[model]]\nid = \"tiny-qwen\"")[0] + RAY_TABLES)
    deploy(None, ServerConfig(port=ray_cluster.port, enable_embeddings=False), load_fleet_toml(str(path)))
    try:
        wait_healthy(ray_cluster.base_url, timeout=120)
        assert running("engine-tiny-llama") == 1
        stop = threading.Event()

        def load():
            body = {"model": "tiny-llama", "prompt": PROMPTS["tiny-llama"], "max_tokens": 200, "ignore_eos": True}
            while not stop.is_set():
                httpx.post(f"{ray_cluster.base_url}/v1/completions", json=body, timeout=60)

        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        try:
            assert until(lambda: running("engine-tiny-llama") == 2, 90), "did not scale up under load"
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert until(lambda: running("engine-tiny-llama") == 1, 120), "did not scale back down"
    finally:
        serve.delete(APP)
