"""A base model served by an engine deployment, as a Target of the gateway's catalog.

Contract (the local Target's, plus failure handling): `chat` / `complete` yield the same
chunk objects the replica's local Target yields, as they come. A replica that dies (or
cannot be reached) before the first chunk reached the caller: the request is sent again,
Ray picks a live replica (up to `retries` times, then a 503). One that dies after it: a 502
`APIError`, which dispatch sends in-band; nothing waits on a dead replica. Leaving the
iterator early cancels the call, which aborts its engine rows in the replica. A
non-streamed answer is one chunk at its end, so it is always retried whole."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import ray.exceptions
from ray import serve

from fleetlm.openai.chunks import ModelCard
from fleetlm.openai.errors import APIError, NotFoundError, UnavailableError
from fleetlm.ray.wire import RemoteError

log = logging.getLogger("fleetlm.ray")

# the replica is gone or unreachable: the request never ran, or ran on a process that is dead
REPLICA_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)


class RayTarget:
    """One model id (a base model, or `<base>:<adapter>`) on an engine deployment."""

    def __init__(self, model_id: str, handle, *, base_id: str | None = None, card: ModelCard | None = None,
                 retries: int = 2):
        self.model_id, self.handle, self.retries = model_id, handle, retries
        self.base_id = base_id or model_id
        self._card = card  # a base model's is fetched from a replica by `connect`

    async def connect(self) -> None:
        """Fetch the base model's card from a replica (waits until one is up)."""
        self._card = await self.handle.card.remote()

    def card(self) -> ModelCard:
        if self._card is None:
            return ModelCard(self.model_id)
        return self._card

    def engines(self) -> frozenset[str]:
        return frozenset({self.base_id})

    def chat(self, req) -> AsyncIterator:
        return self._stream("chat", req)

    def complete(self, req) -> AsyncIterator:
        return self._stream("complete", req)

    async def _stream(self, method: str, req) -> AsyncIterator:
        handle = self.handle.options(stream=True, multiplexed_model_id="" if self.model_id == self.base_id
                                     else self.model_id)
        for attempt in range(self.retries + 1):
            call = getattr(handle, method).remote(req, self.model_id)
            started, done = False, False
            try:
                async for item in call:
                    if isinstance(item, RemoteError):
                        raise item.exception()
                    started = True
                    yield item
                done = True
                return
            except REPLICA_LOST as exc:
                done = True  # nothing left to cancel
                if started:
                    raise APIError(502, f"the replica serving {self.model_id} stopped mid-answer: "
                                        f"{type(exc).__name__}", code="replica_lost") from None
                log.warning("%s: replica lost before the first chunk (%s); retry %d of %d", self.model_id,
                            type(exc).__name__, attempt + 1, self.retries)
            except ray.exceptions.RayError as exc:  # a failure inside the replica that is not an APIError
                done = True
                raise APIError(500, f"{self.model_id}: {type(exc).__name__}", code="engine_error") from None
            finally:
                if not done:  # the caller left (a disconnect, a router moving on): stop the replica's work
                    call.cancel()
        raise UnavailableError(f"{self.model_id}: no replica could serve the request "
                               f"({self.retries + 1} tries)", status=503, code=None)


class RayAdapterSource:
    """`<base>:<name>` for every adapter folder (a sub-folder with adapter_config.json) of the
    shared `adapters_dir`, served by the base model's deployment."""

    def __init__(self, base: RayTarget, adapters_dir: str):
        self.base, self.folder = base, Path(adapters_dir)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if (p / "adapter_config.json").is_file())

    def resolve(self, model: str) -> RayTarget | None:
        base, sep, name = model.partition(":")
        if not sep or base != self.base.model_id:
            return None
        if name not in self.names():
            raise NotFoundError(f"The model {model!r} does not exist; see GET /v1/models")
        return self._target(name)

    def cards(self) -> list[ModelCard]:
        return [self._target(name).card() for name in self.names()]

    def _target(self, name: str) -> RayTarget:
        b = self.base
        card = ModelCard(f"{b.model_id}:{name}", max_model_len=b.card().max_model_len, parent=b.model_id,
                         root=str(self.folder / name), pricing=b.card().pricing)
        return RayTarget(card.id, b.handle, base_id=b.model_id, card=card, retries=b.retries)


class ReplicaHealth:
    """`/health`'s view of the engine deployments: a base model without a RUNNING replica
    is a problem. Ray's status is read at most every `every_s` (it is a controller call)."""

    def __init__(self, app_name: str, deployments: dict[str, str], every_s: float = 1.0):
        self.app_name, self.deployments, self.every_s = app_name, deployments, every_s  # model id -> deployment
        self._at, self._last = 0.0, []

    async def __call__(self) -> list[str]:
        if time.monotonic() - self._at > self.every_s:
            self._last = await asyncio.to_thread(self._read)
            self._at = time.monotonic()
        return self._last

    def _read(self) -> list[str]:
        try:
            app = serve.status().applications.get(self.app_name)
        except Exception as exc:  # the controller is unreachable: report it, do not fail /health itself
            return [f"ray serve status unavailable: {type(exc).__name__}"]
        out = []
        for model, name in self.deployments.items():
            d = app.deployments.get(name) if app else None
            if d is None or not d.replica_states.get("RUNNING"):
                out.append(f"{model}: no live replica")
        return out
