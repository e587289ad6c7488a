"""The adapters a local engine serves as `<base>:<adapter>` (e.g. `gemma-3-270m:sql-expert`).

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

from fleetlm.engine.lora import LoRAError, LoRANotFoundError, LoRARequest
from fleetlm.openai.errors import BadRequestError, NotFoundError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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
        raise NotFoundError(f"The model {model_id!r} does not exist: no adapter {name!r} is loaded; "
                            f"see GET /v1/models")

    def load(self, name: str, path: str) -> LoRARequest:
        """Validate and register (replacing an adapter of the same name)."""
        if not NAME.match(name or ""):
            raise BadRequestError(f"lora_name {name!r} must be 1-128 of [A-Za-z0-9._-], starting with "
                                  "a letter or digit", param="lora_name")
        try:
            req = LoRARequest(name, str(Path(path).expanduser().resolve()))
        except (OSError, RuntimeError, ValueError) as exc:  # "~nobody/x" (no such home), a NUL byte
            raise BadRequestError(f"lora_path {path[:200]!r} is not a usable path: {exc}", param="lora_path") from None
        self.pool.unload(name)  # forget any earlier weights under this name
        try:
            self.pool.check(req)
        except LoRANotFoundError as exc:
            raise NotFoundError(str(exc), param=exc.param) from None
        except LoRAError as exc:
            raise BadRequestError(str(exc), param=exc.param) from None
        with self._lock:
            self._loaded[name] = req.path
            self._hidden.discard(name)
        return req

    def unload(self, name: str) -> None:
        with self._lock:
            known = name in self._loaded or (name in self._from_dir and name not in self._hidden)
            if not known:
                raise NotFoundError(f"no adapter {name!r} is loaded", param="lora_name")
            self._loaded.pop(name, None)
            if name in self._from_dir:
                self._hidden.add(name)
        self.pool.unload(name)
