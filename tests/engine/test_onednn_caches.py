"""oneDNN's shape-keyed caches are capped before the engine's first mkldnn op; a value the
user set in the environment wins."""

import os

from fleetlm.engine.cpu_memory import ONEDNN_CACHE_CAPACITY, bound_onednn_caches

VARS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def test_caps_both_caches(monkeypatch):
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    bound_onednn_caches()
    assert [os.environ[v] for v in VARS] == [str(ONEDNN_CACHE_CAPACITY)] * 2


def test_user_value_wins(monkeypatch):
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    bound_onednn_caches(64)
    assert os.environ["LRU_CACHE_CAPACITY"] == "7" and os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
