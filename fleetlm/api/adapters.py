"""LoRA adapters as model ids: `<base>:<adapter>` (e.g. `gemma-3-270m:sql-expert`).

Contract: `AdapterRegistry` maps adapter names to PEFT folders. Names come from
`--adapters-dir` (each sub-folder with an `adapter_config.json`; the folder is rescanned at
most every `rescan_s` seconds when a name is missing or the model list is read, so a new
folder becomes servable without a restart) and from runtime `load`/`unload` (vLLM's
`/v1/load_lora_adapter` and `/v1/unload_lora_adapter`). `load` validates the adapter with the
engine before it is listed (a corrupt one is a 400 with the reason); an unknown name is a 404.
Unloading never disturbs running requests: they keep the weights they started with.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, StrictStr

from fleetlm.openai.errors import APIError
from fleetlm.engine.lora import LoRARequest

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class LoadLoRARequest(BaseModel):
    """Body of POST /v1/load_lora_adapter (vLLM's shape)."""

    model_config = ConfigDict(extra="forbid")
    lora_name: StrictStr
    lora_path: StrictStr


class UnloadLoRARequest(BaseModel):
    """Body of POST /v1/unload_lora_adapter (vLLM's shape; lora_int_id is accepted and ignored)."""

    model_config = ConfigDict(extra="forbid")
    lora_name: StrictStr
    lora_int_id: int | None = None


class AdapterRegistry:
    def __init__(self, pool, *, adapters_dir: str | None = None, rescan_s: float = 2.0):
        self.pool = pool  # the engine's lora.LoRAPool (validation, unloading)
        self.dir = Path(adapters_dir) if adapters_dir else None
        self.rescan_s = rescan_s
        self._from_dir: dict[str, str] = {}
        self._loaded: dict[str, str] = {}  # runtime loads win over folders of the same name
        self._hidden: set[str] = set()  # folder adapters unloaded at run time
        self._scanned = 0.0
        self._lock = threading.Lock()
        if self.dir is not None and not self.dir.is_dir():
            raise ValueError(f"--adapters-dir {self.dir} is not a folder")
        self.rescan(force=True)

    def rescan(self, *, force: bool = False) -> None:
        if self.dir is None or (not force and time.monotonic() - self._scanned < self.rescan_s):
            return
        found = {p.name: str(p) for p in sorted(self.dir.iterdir())
                 if NAME.match(p.name) and (p / "adapter_config.json").is_file()}
        with self._lock:
            self._from_dir, self._scanned = found, time.monotonic()

    def names(self) -> list[str]:
        self.rescan()
        with self._lock:
            return sorted((set(self._from_dir) - self._hidden) | set(self._loaded))

    def get(self, name: str, model_id: str) -> LoRARequest:
        """The adapter called `name`, or a 404 naming `model_id`."""
        for attempt in range(2):
            with self._lock:
                path = self._loaded.get(name) or (self._from_dir.get(name) if name not in self._hidden else None)
            if path is not None:
                return LoRARequest(name, path)
            if attempt == 0:
                self.rescan(force=self.dir is not None)
        raise APIError(404, f"The model {model_id!r} does not exist: no adapter {name!r} is loaded; "
                       f"see GET /v1/models", param="model", code="model_not_found")

    def load(self, name: str, path: str) -> LoRARequest:
        """Validate and register (replacing an adapter of the same name)."""
        if not NAME.match(name or ""):
            raise APIError(400, f"lora_name {name!r} must be 1-128 of [A-Za-z0-9._-], starting with "
                           "a letter or digit", param="lora_name")
        req = LoRARequest(name, str(Path(path).expanduser().resolve()))
        self.pool.unload(name)  # forget any earlier weights under this name
        self.pool.check(req)  # LoRANotFoundError -> 404, LoRAError -> 400 (api/errors.py)
        with self._lock:
            self._loaded[name] = req.path
            self._hidden.discard(name)
        return req

    def unload(self, name: str) -> None:
        with self._lock:
            known = name in self._loaded or (name in self._from_dir and name not in self._hidden)
            if not known:
                raise APIError(404, f"no adapter {name!r} is loaded", param="lora_name", code="model_not_found")
            self._loaded.pop(name, None)
            if name in self._from_dir:
                self._hidden.add(name)
        self.pool.unload(name)


class AdapterTarget:
    """`<base>:<adapter>` as a catalog Target: the local engine's Serving with the adapter."""

    def __init__(self, serving, model_id: str, lora: LoRARequest):
        self.serving, self.model_id, self.lora = serving, model_id, lora

    def card(self, created: int) -> dict:
        return {"id": self.model_id, "object": "model", "created": created, "owned_by": "fleetlm",
                "parent": self.serving.model.model_id, "root": self.lora.path,
                "max_model_len": self.serving.model.max_model_len}

    async def chat(self, req, raw):
        return await self.serving.chat(req, raw, lora_request=self.lora)

    async def complete(self, req, raw):
        return await self.serving.complete(req, raw, lora_request=self.lora)


class AdapterSource:
    """Catalog entries made on demand: `<base>:<name>` for every registered adapter."""

    def __init__(self, serving, registry: AdapterRegistry):
        self.serving, self.registry = serving, registry
        self.base = serving.model.model_id

    def resolve(self, model: str) -> AdapterTarget | None:
        base, sep, name = model.partition(":")
        if not sep or base != self.base:
            return None
        return AdapterTarget(self.serving, model, self.registry.get(name, model))

    def cards(self, created: int) -> list[dict]:
        out = []
        for name in self.registry.names():
            try:
                out.append(AdapterTarget(self.serving, f"{self.base}:{name}",
                                         self.registry.get(name, name)).card(created))
            except APIError:  # removed between listing and lookup
                pass
        return out
