"""Device catalog: peak dense FLOP/s, memory bandwidth and size, interconnect, $/hour.

Contract: `CATALOG` maps a device name to a frozen `Device`; `get_devices(user=...)` adds
user devices (from `[[device]]` tables in fleet.toml, validated like any config: unknown keys
are errors) and, when asked, "local-cpu": this machine, measured by `measure_local_cpu()`.
All figures are *dense* (no 2:4 sparsity). Prices are typical on-demand $ per device-hour
and move often: override them with a user device of the same name.

Efficiency factors (what fraction of peak a real engine reaches) live on the device because
they differ by device and software stack; GPU defaults are assumptions (vLLM-class engines
reach roughly 50-70% of peak FLOP/s in prefill and 60-80% of peak bandwidth in decode), the
local CPU's are fitted by `fleet hardware calibrate`.
"""

from __future__ import annotations

import time

from fleetlm.config import Device  # a device is configuration too: [[device]] tables in fleet.toml

# NVLink / Infinity Fabric figures are per direction (half the bidirectional totals in the
# datasheets); PCIe Gen4 x16 is ~32 GB/s per direction. network_gbps: one NIC per device.
CATALOG: dict[str, Device] = {d.name: d for d in [
    Device(name="H100-SXM", bf16_tflops=989.4, fp8_tflops=1978.9, mem_bw_gbps=3350, mem_gb=80,
           interconnect_gbps=450, network_gbps=50, usd_per_hour=2.99,
           source="NVIDIA H100 Tensor Core GPU datasheet (SXM5: 989 TF bf16 dense, 3.35 TB/s, "
                  "NVLink 900 GB/s); price: Lambda on-demand 8x H100 SXM, per GPU-hour (2024)"),
    Device(name="H200", bf16_tflops=989.4, fp8_tflops=1978.9, mem_bw_gbps=4800, mem_gb=141,
           interconnect_gbps=450, network_gbps=50, usd_per_hour=3.79,
           source="NVIDIA H200 Tensor Core GPU datasheet (SXM: 141 GB HBM3e, 4.8 TB/s, same "
                  "tensor cores as H100); price: typical neocloud on-demand per GPU-hour (2024-25), approx."),
    Device(name="A100-80GB", bf16_tflops=312, fp8_tflops=None, mem_bw_gbps=2039, mem_gb=80,
           interconnect_gbps=300, network_gbps=25, usd_per_hour=1.79,
           source="NVIDIA A100 datasheet (SXM4 80GB: 312 TF bf16 dense, 2,039 GB/s, NVLink 600 "
                  "GB/s); price: Lambda on-demand 8x A100 80GB SXM, per GPU-hour (2024)"),
    Device(name="L40S", bf16_tflops=362.05, fp8_tflops=733, mem_bw_gbps=864, mem_gb=48,
           interconnect_gbps=32, network_gbps=3.1, usd_per_hour=1.86,
           source="NVIDIA L40S datasheet (362 TF bf16 / 733 TF fp8 dense, 864 GB/s, 48 GB, PCIe "
                  "Gen4 x16, no NVLink); price: AWS g6e.xlarge on-demand us-east-1"),
    Device(name="L4", bf16_tflops=121, fp8_tflops=242.5, mem_bw_gbps=300, mem_gb=24,
           interconnect_gbps=32, network_gbps=1.9, usd_per_hour=0.80,
           source="NVIDIA L4 datasheet (121 TF bf16 / 242.5 TF fp8 dense, 300 GB/s, 24 GB, PCIe "
                  "Gen4 x16); price: AWS g6.xlarge on-demand us-east-1 ($0.805)"),
    Device(name="A10G", bf16_tflops=125, fp8_tflops=None, mem_bw_gbps=600, mem_gb=24,
           interconnect_gbps=32, network_gbps=1.9, usd_per_hour=1.01,
           source="NVIDIA A10 datasheet (125 TF bf16 dense, 600 GB/s, 24 GB; AWS's A10G is an "
                  "A10 variant and AWS publishes no separate tensor figure); price: AWS g5.xlarge "
                  "on-demand us-east-1 ($1.006)"),
    Device(name="MI300X", bf16_tflops=1307.4, fp8_tflops=2614.9, mem_bw_gbps=5300, mem_gb=192,
           interconnect_gbps=448, network_gbps=50, usd_per_hour=2.50,
           source="AMD Instinct MI300X datasheet (1,307 TF bf16 / 2,615 TF fp8 dense, 5.3 TB/s, "
                  "192 GB HBM3, Infinity Fabric 7x128 GB/s); price: typical neocloud on-demand "
                  "per GPU-hour (2024-25), approx."),
    Device(name="CPU-EPYC-9654", kind="cpu", bf16_tflops=14.7, mem_bw_gbps=460.8, mem_gb=768,
           max_tp=1, network_gbps=12.5, usd_per_hour=5.50, compute_eff=0.5, bandwidth_eff=0.6,
           step_overhead_s=0.01,
           source="AMD EPYC 9654 (96 Zen 4 cores, 2.4 GHz, AVX-512 BF16: ~64 bf16 FLOP/cycle/core; "
                  "12 x DDR5-4800 = 460.8 GB/s); price: one socket of an AWS m7a.48xlarge, approx."),
    Device(name="CPU-Xeon-8480", kind="cpu", bf16_tflops=114.7, mem_bw_gbps=307.2, mem_gb=512,
           max_tp=1, network_gbps=12.5, usd_per_hour=4.84, compute_eff=0.4, bandwidth_eff=0.6,
           step_overhead_s=0.01,
           source="Intel Xeon Platinum 8480+ (56 cores, AMX bf16: 1,024 FLOP/cycle/core at 2.0 GHz; "
                  "8 x DDR5-4800 = 307 GB/s); price: one socket of an AWS m7i.48xlarge, approx."),
]}


def get_devices(*, user: list[Device | dict] | None = None, local: Device | None = None) -> dict[str, Device]:
    """The catalog, plus `local` (usually `measure_local_cpu()`), plus user devices (`Device`s or
    dicts of their fields); a user device replaces a catalog device of the same name."""
    out = dict(CATALOG)
    if local is not None:
        out[local.name] = local
    for values in user or []:
        dev = values if isinstance(values, Device) else Device.from_dict(dict(values), label="device")
        out[dev.name] = dev
    return out


def measure_local_cpu(*, dtype: str = "auto", seconds: float = 1.0, name: str = "local-cpu", now=None) -> Device:
    """This machine, measured: best-of-repeats GEMM FLOP/s in bf16 and in fp32, and streaming
    read bandwidth (a large tensor sum), with torch's current thread count, on the clock `now`
    (default wall time; calibration passes its CPU-time clock), `seconds` each. Price 0.

    `dtype` ("auto", "bf16" or "fp32") is the one the engine runs here, named first in
    `source`; "auto" resolves it as the engine does (`engine.loader.resolve_dtype`): bf16 on
    CPUs with AVX-512 BF16 or AMX, fp32 elsewhere, where bf16 is emulated ~100x slower. Both
    figures are real measurements; an emulated bf16 is timed on a smaller GEMM (512x1024x1024)
    so that one repeat fits the time. The perf model reads the one of its own `dtype`
    (`Perf(..., dtype="fp32")` for an fp32 engine)."""
    import os

    import torch

    now = now or time.perf_counter
    from fleetlm.engine.loader import cpu_has_fast_bf16

    native_bf16 = cpu_has_fast_bf16()
    if dtype == "auto":
        dtype = "bf16" if native_bf16 else "fp32"
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"dtype must be auto, bf16 or fp32, got {dtype!r}")
    full, small = (1024, 2048, 2048), (512, 1024, 1024)
    shapes = {"fp32": full, "bf16": full if native_bf16 else small}
    flops = {d: _gemm_flops(torch.float32 if d == "fp32" else torch.bfloat16, shapes[d], seconds, now)
             for d in ("fp32", "bf16")}
    x = torch.ones(64 * 2**20, dtype=torch.float32)  # 256 MiB, far beyond any cache
    best_bw, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = now()
        x.sum()
        best_bw = max(best_bw, x.numel() * 4 / max(now() - t0, 1e-9))
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    other = "bf16" if dtype == "fp32" else "fp32"

    def gemm(d: str) -> str:
        return f"{d} {'x'.join(map(str, shapes[d]))} GEMM"

    return Device(name=name, kind="cpu", bf16_tflops=flops["bf16"] / 1e12,
                  fp32_tflops=flops["fp32"] / 1e12, mem_bw_gbps=best_bw / 1e9,
                  mem_gb=mem_gb, max_tp=1, usd_per_hour=0.0, compute_eff=0.5, bandwidth_eff=0.5,
                  step_overhead_s=0.005,
                  source=f"measured here: {gemm(dtype)} (the engine's dtype), {gemm(other)} and a "
                         f"256 MiB read, {torch.get_num_threads()} threads, best of {seconds:g} s each")


def _gemm_flops(tdtype, shape: tuple[int, int, int], seconds: float, now) -> float:
    """Best FLOP/s of an (m x k) @ (k x n) matmul over `seconds` (at least one repeat)."""
    import torch

    m, k, n = shape
    a, b = torch.randn(m, k, dtype=tdtype), torch.randn(k, n, dtype=tdtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    while best == 0.0 or time.perf_counter() < deadline:
        t0 = now()
        torch.matmul(a, b)
        best = max(best, 2 * m * k * n / max(now() - t0, 1e-9))
    return best
