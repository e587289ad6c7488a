"""measure_local_cpu measures both matmul dtypes and names the one the engine runs on this
CPU first, so the planner does not model an fp32 machine by its (emulated, ~100x slower) bf16
speed; calibration fits the perf model at the engine's bytes per element."""

from __future__ import annotations

from dataclasses import replace

import pytest

import fleetlm.engine.loader as loader
from fleetlm.hardware.calibrate import Point, fit, predict
from fleetlm.hardware.devices import Device, measure_local_cpu
from fleetlm.hardware.perfmodel import ModelShape


def test_auto_names_fp32_where_bf16_is_not_native(monkeypatch):
    monkeypatch.setattr(loader, "cpu_has_fast_bf16", lambda: False)
    dev = measure_local_cpu(seconds=0.05)
    assert dev.name == "local-cpu" and dev.kind == "cpu"
    assert dev.source.startswith("measured here: fp32 1024x2048x2048 GEMM (the engine's dtype), bf16 512x")
    # > 1 GFLOP/s fp32, > 10 MFLOP/s even for emulated bf16, > 100 MB/s on any real CPU
    assert dev.fp32_tflops > 1e-3 and dev.bf16_tflops > 1e-5 and dev.mem_bw_gbps > 0.1


def test_explicit_dtype_is_named_first_and_bad_dtype_refused():
    dev = measure_local_cpu(dtype="bf16", seconds=0.05)
    assert dev.source.startswith("measured here: bf16 ") and "fp32 1024x2048x2048 GEMM" in dev.source
    with pytest.raises(ValueError, match="fp16"):
        measure_local_cpu(dtype="fp16", seconds=0.05)


def test_fit_recovers_the_efficiencies_of_an_fp32_engine():
    """Timings made by the fp32 model with known factors: the fit in fp32 finds them again.
    Counting weights and KV at 2 bytes (as before fp32 existed here, with the fp32 peak in the
    bf16 field) fits the same timings only by reporting half the true bandwidth efficiency."""
    shape = ModelShape(name="gemma-ish", hidden=640, layers=18, heads=4, kv_heads=1, head_dim=256,
                       intermediate=2048, vocab=262144, tied_embeddings=True)
    true = Device(name="cpu", kind="cpu", bf16_tflops=0.001, fp32_tflops=0.14, mem_bw_gbps=30, mem_gb=24,
                  usd_per_hour=0, max_tp=1, compute_eff=0.6, bandwidth_eff=0.4, step_overhead_s=0.003)
    points = [Point(b, n, *predict(shape, true, Point(b, n, 0, 0), "fp32"))
              for b, n in ((1, 64), (1, 256), (4, 64), (4, 256), (16, 64), (16, 256))]
    got = fit(shape, true, points, "fp32")
    assert (got.compute_eff, got.bandwidth_eff, got.step_overhead_s) == pytest.approx((0.6, 0.4, 0.003), rel=1e-3)
    two_bytes = fit(shape, replace(true, bf16_tflops=true.fp32_tflops), points, "bf16")
    assert two_bytes.bandwidth_eff == pytest.approx(0.2, rel=1e-3)
