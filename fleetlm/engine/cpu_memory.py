"""Process-wide memory settings for the CPU engine: glibc's heap trimming and oneDNN's
shape-keyed caches. Both are set once, before the engine's first step (and, for oneDNN,
before its first use in the process)."""

from __future__ import annotations

import os


def keep_freed_memory_in_heap() -> bool:
    """glibc: serve large allocations from the heap and never trim it, so buffers freed at
    the end of a step are reused by the next one without page faults. Returns False where
    glibc's mallopt is not available (other libc, other OS)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1)
        return bool(ok)
    except (OSError, AttributeError):
        return False


# Entries kept in each of oneDNN's two shape-keyed caches (its primitive cache and ideep's
# LRU of computations); both default to 1,024. Every PackedLinear call with a new row count
# (prompt chunks and decode batches change it each step) adds one entry per weight shape, so
# a long-running server filled them: +600 MiB RSS over a 10,000-request soak, still growing.
# Measured (bf16, 2 cores, 4 projections, row counts 1-600): 1,024 -> +827 MiB, 128 -> +126 MiB,
# no slower (a miss rebuilds a primitive in microseconds). An environment value set by the
# user wins.
ONEDNN_CACHE_CAPACITY = 128


def bound_onednn_caches(capacity: int = ONEDNN_CACHE_CAPACITY) -> None:
    """Cap oneDNN's shape-keyed caches. Read once, at oneDNN's first use in the process: call
    before any mkldnn op (weight packing at load included)."""
    for var in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(var, str(capacity))
