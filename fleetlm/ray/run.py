"""`fleet serve --ray`: start (or join) a Ray cluster, run the fleet's Serve application on it,
and serve until SIGINT/SIGTERM.

Contract: with no address, a local cluster is started on 127.0.0.1 (with at least as many
logical CPUs as the replicas ask for) and stopped on exit;
with one ("auto", "ray://head:10001", "host:6379"), the cluster is joined and left running,
only this application is deleted on exit. Ray's usage statistics are off unless the
environment already says otherwise. Serve's HTTP proxy listens on the server config's host
and port."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading

from fleetlm.config import EngineConfig, ServerConfig
from fleetlm.deploy_config import RayConfig
from fleetlm.fleet_toml import FleetFile

log = logging.getLogger("fleetlm.ray")


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """`ray.init`: join the cluster at `address`, or start a local one bound to 127.0.0.1 (with
    `num_cpus` logical CPUs; None: the machine's). True when a local cluster was started."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # read by ray at init, in this process only
    import ray

    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return False
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level=logging.WARNING)
    return True


def ray_config_of(fleet_file: FleetFile | None) -> RayConfig:
    """The fleet.toml's `[ray]` table, or its defaults."""
    return fleet_file.ray if fleet_file is not None and fleet_file.ray is not None else RayConfig()


def deploy(engine_config: EngineConfig | None, server: ServerConfig, fleet_file: FleetFile | None) -> None:
    """Run the fleet's application (`served_models`, `[ray]`) on the connected cluster, Serve's
    proxy on server.host and server.port; returns once every replica is up."""
    from ray import serve

    from fleetlm.api.server import served_models
    from fleetlm.ray.deploy import fleet_app

    ray_config = ray_config_of(fleet_file)
    specs = served_models(engine_config, server, fleet_file)
    serve.start(http_options={"host": server.host, "port": server.port})
    serve.run(fleet_app(specs, server, fleet_file, ray_config), name=ray_config.app_name, route_prefix="/")


def serve_on_ray(engine_config: EngineConfig | None, server: ServerConfig, fleet_file: FleetFile | None,
                 *, address: str | None = None) -> None:
    """`fleet serve --ray`: connect, deploy, wait for SIGINT/SIGTERM, clean up."""
    import ray
    from ray import serve

    from fleetlm.api.server import served_models
    from fleetlm.ray.deploy import cpus_asked

    ray_config = ray_config_of(fleet_file)
    # a local cluster gets a logical CPU for every one asked for (they only place replicas;
    # each engine's torch threads are its num_threads), so a laptop runs any [ray] table
    asked = math.ceil(cpus_asked(served_models(engine_config, server, fleet_file), ray_config))
    started = connect(address or ray_config.address, num_cpus=max(os.cpu_count() or 1, asked))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        deploy(engine_config, server, fleet_file)
        log.info("fleet on Ray Serve: http://%s:%d/v1 (%s)", server.host, server.port,
                 "local cluster" if started else f"cluster {address or ray_config.address}")
        stop.wait()
    finally:
        if started:
            serve.shutdown()
        else:
            serve.delete(ray_config.app_name)
        ray.shutdown()
