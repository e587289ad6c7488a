"""Concurrent routing embeddings share forwards: the Coalescer's contract on a toy batch
function, then the real MiniLM encoder under 8 threads (same vectors, fewer forwards)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fleetlm.compound.router.coalesce import Coalescer


def test_concurrent_callers_share_calls_and_get_their_own_results():
    running, overlaps, lock = [0], [0], threading.Lock()

    def slow_square(items):
        with lock:
            running[0] += 1
            overlaps[0] = max(overlaps[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return [x * x for x in items]

    c = Coalescer(slow_square)
    assert c([3]) == [9] and c.calls == 1  # alone: runs at once
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: c([i, i + 100]), range(16)))
    assert got == [[i * i, (i + 100) ** 2] for i in range(16)]
    assert overlaps[0] == 1  # never two batches at once
    assert c.items == 1 + 32 and c.calls < 1 + 16  # 16 callers, fewer batches


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_runs():
    gate = threading.Event()

    def fn(items):
        gate.wait(5)
        if "bad" in items:
            raise ValueError("bad item")
        return [s.upper() for s in items]

    def wait_for(cond):
        deadline = time.monotonic() + 5
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert cond()

    c = Coalescer(fn)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(c, ["a"])  # leads; blocks in fn until the gate opens
        wait_for(lambda: c._busy)
        queued = [pool.submit(c, ["bad"]), pool.submit(c, ["b"])]  # queue behind it: one batch
        wait_for(lambda: len(c._queue) == 2)
        gate.set()
        assert first.result(5) == ["A"]
        for f in queued:
            with pytest.raises(ValueError, match="bad item"):
                f.result(5)
    assert c(["c"]) == ["C"]  # the coalescer is not stuck after a failed batch


def test_routing_encoder_under_threads_matches_one_at_a_time():
    from fleetlm.compound.router.encoder import RoutingEncoder

    prompts = [f"Question {i}: what is {i} times {i + 3}, and why does it matter for topic {i % 5}?"
               for i in range(24)]
    enc = RoutingEncoder()
    one_by_one = np.stack([enc.encode([p])[0] for p in prompts])
    before = enc._embed_rows.calls
    with ThreadPoolExecutor(8) as pool:
        together = np.stack([v[0] for v in pool.map(lambda p: enc.encode([p]), prompts)])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert enc._embed_rows.calls - before < len(prompts)  # some forwards served several prompts
    with pytest.raises(ValueError, match="at least one"):
        enc.encode([])
