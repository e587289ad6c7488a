"""measure_local_cpu measures the matmul dtype the engine runs on this CPU, so the planner
does not model an fp32 machine by its (emulated, ~100x slower) bf16 speed."""

from __future__ import annotations

import fleetlm.engine.loader as loader
from fleetlm.hardware.devices import measure_local_cpu


def test_auto_measures_fp32_where_bf16_is_not_native(monkeypatch):
    monkeypatch.setattr(loader, "cpu_has_fast_bf16", lambda: False)
    dev = measure_local_cpu(seconds=0.05)
    assert dev.name == "local-cpu" and dev.kind == "cpu"
    assert "fp32" in dev.source and "bf16" not in dev.source
    assert dev.bf16_tflops > 1e-3 and dev.mem_bw_gbps > 0.1  # > 1 GFLOP/s and 100 MB/s on any real CPU


def test_explicit_dtype_is_named_in_the_source():
    dev = measure_local_cpu(dtype="fp32", seconds=0.05)
    assert dev.source.startswith("measured here: fp32 ")
