"""The routing encoder tokenizes only the two ends of long prompts; the window it reads must be
exactly the window of the whole prompt's tokenization (real routing prompts and edge cases)."""

from __future__ import annotations

import pytest

from fleetlm.compound.router.data import default_data_root, load_dataset
from fleetlm.compound.router.encoder import EncoderConfig, RoutingEncoder

EDGE = [
    "short",
    "",
    "x" * 5000,  # one huge "word": the slices hold no whitespace -> whole-text path
    ("word " * 300) + "y" * 3000,  # the tail is one long word
    "z" * 3000 + (" tail" * 300),  # the head is one long word
    ("Grüße aus München — 東京タワーは高い。 Ça va très bien! 🚀\n" * 80),
    ("a\x0bb\x0cc\x1cd " * 400),  # control characters BERT deletes (no split there)
    ("\t\r\n  spaced   out\u00a0words  " * 150),
]


def _real_prompts(n: int = 150) -> list[str]:
    if not (default_data_root() / "routerbench_zs").is_dir():
        return []
    prompts = []
    for data in ("routerbench_zs", "llmrouter"):
        prompts += [q.prompt for q in load_dataset(data, "test")[:n]]
    return prompts


@pytest.mark.parametrize("config", [EncoderConfig(), EncoderConfig(0, 32), EncoderConfig(8, 0),
                                    EncoderConfig(64, 128)])
def test_sliced_window_equals_the_whole_prompt_window(config):
    enc = RoutingEncoder(config)
    enc._ensure_loaded()
    assert enc._bert_pretokenizer  # MiniLM's tokenizer: the fast path is really exercised
    texts = EDGE + _real_prompts()
    whole = [enc.window(ids) for ids in enc._tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert enc._window_ids(texts) == whole
