"""The fleet as one Ray Serve application: an engine deployment per local base model, the
embedder (when embeddings are on) and the gateway (the FastAPI app, ingress) over them, with
replicas, autoscaling and CPU shares from the `[ray]` table.

Contract: `fleet_app` only describes the application (Serve builds it on `serve.run`); every
replica builds its own part from plain, picklable configs: an engine replica its AsyncLLM,
a gateway replica the whole catalog, whose base models are `RayTarget`s over deployment
handles. Model folders and adapters folders must be reachable at the same path on every
node (a shared file system), as in one process."""

from __future__ import annotations

import logging

from ray import serve

from fleetlm.config import ServerConfig
from fleetlm.deploy_config import ModelConfig, RayConfig, RayDeploymentConfig
from fleetlm.fleet_toml import FleetFile
from fleetlm.ray.replica import EngineReplica

log = logging.getLogger("fleetlm.ray")

GATEWAY = "gateway"
EMBEDDER = "embedder"
EMBEDDER_CPUS = 0.5  # all-MiniLM-L6-v2 is small; batched requests share its forwards
GATEWAY_CPUS = 0.1  # it only parses, routes and forwards: a small share, so engines get the cores
GATEWAY_MAX_ONGOING = 1000  # its own admission control (max_pending_requests) bounds what it takes
ENGINE_CPUS = 1.0
HEALTH_CHECK_PERIOD_S = 2.0  # a stopped engine is noticed (and its replica replaced) within seconds


def engine_name(model_id: str) -> str:
    """The engine deployment serving base model `model_id`."""
    return f"engine-{model_id}"


def deployment_options(cfg: RayDeploymentConfig, *, cpus: float, max_ongoing: int) -> dict:
    """`serve.deployment` keyword arguments from a `[[ray.deployment]]` table (`cpus`,
    `max_ongoing`: this kind's defaults)."""
    options = {"max_ongoing_requests": cfg.max_ongoing_requests or max_ongoing,
               "ray_actor_options": {"num_cpus": cpus if cfg.num_cpus is None else cfg.num_cpus,
                                     "num_gpus": cfg.num_gpus},
               "health_check_period_s": HEALTH_CHECK_PERIOD_S}
    if cfg.autoscaled:
        options["autoscaling_config"] = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                         "target_ongoing_requests": cfg.target_ongoing_requests,
                                         "upscale_delay_s": cfg.upscale_delay_s,
                                         "downscale_delay_s": cfg.downscale_delay_s}
    else:
        options["num_replicas"] = cfg.num_replicas or 1
    return options


def cpus_asked(specs: list[ModelConfig], ray: RayConfig) -> float:
    """Logical CPUs every replica asks for at its most (autoscaled ones at max_replicas)."""

    def asked(name: str, default: float) -> float:
        cfg = ray.for_name(name)
        count = cfg.max_replicas if cfg.autoscaled else cfg.num_replicas or 1
        return count * (default if cfg.num_cpus is None else cfg.num_cpus)

    fixed = asked(GATEWAY, GATEWAY_CPUS) + asked(EMBEDDER, EMBEDDER_CPUS)  # the embedder's even when off
    return fixed + sum(asked(s.id, ENGINE_CPUS) for s in specs)


def fleet_app(specs: list[ModelConfig], server: ServerConfig, fleet_file: FleetFile | None, ray: RayConfig):
    """The Serve application: the gateway bound to one engine deployment per base model.
    Deployment names in `ray` other than "gateway" must be base model ids."""
    unknown = sorted({d.name for d in ray.deployment} - {GATEWAY, EMBEDDER} - {s.id for s in specs})
    if unknown:
        raise ValueError(f"[ray] deployment names {unknown} are neither 'gateway', 'embedder' nor a served "
                         f"model id ({', '.join(s.id for s in specs)})")
    parts = [serve.deployment(EngineReplica, name=engine_name(s.id),
                              **deployment_options(ray.for_name(s.id), cpus=ENGINE_CPUS,
                                                   max_ongoing=s.engine.max_num_seqs)).bind(s, server)
             for s in specs]
    embeddings = server.enable_embeddings and embedder_installed()
    if embeddings:
        from fleetlm.ray.embedder import EmbedderReplica

        parts.append(serve.deployment(EmbedderReplica, name=EMBEDDER, **deployment_options(
            ray.for_name(EMBEDDER), cpus=EMBEDDER_CPUS, max_ongoing=GATEWAY_MAX_ONGOING)).bind())
    builder = gateway_builder(specs, server, fleet_file, ray.app_name, embeddings=embeddings)
    gateway = serve.deployment(serve.ingress(builder)(), name=GATEWAY,
                               **deployment_options(ray.for_name(GATEWAY), cpus=GATEWAY_CPUS,
                                                    max_ongoing=GATEWAY_MAX_ONGOING))
    return gateway.bind(*parts)  # bound so Serve deploys them with it; handles are looked up by name


def embedder_installed() -> bool:
    """The embedding model's package is here (else /v1/embeddings is off, as in one process)."""
    from fleetlm.models.embeddings import EmbeddingModelUnavailable, minilm_folder

    try:
        minilm_folder()
        return True
    except EmbeddingModelUnavailable as exc:
        log.warning("embeddings disabled: %s", exc)
        return False


def gateway_builder(specs: list[ModelConfig], server: ServerConfig, fleet_file: FleetFile | None, app_name: str,
                    *, embeddings: bool):
    """A plain function (what `serve.ingress` accepts as a builder) that each gateway replica
    calls to build its app."""

    def build_gateway_app():
        return gateway_app(specs, server, fleet_file, app_name, embeddings=embeddings)

    return build_gateway_app


def gateway_app(specs: list[ModelConfig], server: ServerConfig, fleet_file: FleetFile | None, app_name: str,
                *, embeddings: bool):
    """The same FastAPI app as `fleet serve`, its base models on the engine deployments (and
    its embedder on the embedder deployment, with `embeddings`)."""
    from fleetlm.api.server import app_for_bases
    from fleetlm.catalog import Base
    from fleetlm.ray.embedder import RemoteEmbedder
    from fleetlm.ray.target import RayAdapterSource, RayTarget, ReplicaHealth

    bases = []
    for s in specs:
        target = RayTarget(s.id, serve.get_deployment_handle(engine_name(s.id), app_name))
        source = RayAdapterSource(target, s.adapters_dir) if s.adapters_dir else None
        bases.append(Base(target, source, start=target.connect))
    health = ReplicaHealth(app_name, {s.id: engine_name(s.id) for s in specs})
    embedder = RemoteEmbedder(serve.get_deployment_handle(EMBEDDER, app_name)) if embeddings else None
    return app_for_bases(bases, config=server, fleet_file=fleet_file, embedder=embedder, checks=[health])
