"""One local Ray cluster for every `ray` test (started once per session, on 127.0.0.1, usage
statistics off), with Serve's HTTP proxy on a free port; each test module deploys its own
application on it. Skipped, saying why, where Ray is not installed."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

import fleetlm
from tests.api.conftest import free_port

pytestmark = pytest.mark.ray


@dataclass
class RayCluster:
    port: int  # Serve's HTTP proxy, on 127.0.0.1

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def ray_cluster():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'fleetlm[ray]')")
    from ray import serve

    from fleetlm.ray.run import connect

    # the workers import the fleetlm under test (a checkout may differ from what is installed)
    root = str(Path(fleetlm.__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    connect(None, num_cpus=4)  # logical CPUs: room for two engine replicas of each model and the gateway
    cluster = RayCluster(free_port())
    serve.start(http_options={"host": "127.0.0.1", "port": cluster.port})
    yield cluster
    import ray

    serve.shutdown()
    ray.shutdown()
