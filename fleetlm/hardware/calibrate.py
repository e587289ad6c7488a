"""`fleet hardware calibrate`: fit the performance model's efficiency factors to this machine.

Contract: `run_sweep` runs fleetlm's own engine (`LLMEngine`, the embedded default model
unless told otherwise) on the local device over (batch, prompt length) points; at each it
times the prefill step of `batch` prompts (one step: the token budget holds them all) and
the decode steps that follow, `repeats` times, keeping medians (other processes share the
CPU, so single timings are noisy). `fit` finds compute_eff, bandwidth_eff and
step_overhead_s that minimise the squared log error of the roofline model against those
medians (scipy least squares); `report` prints predicted vs measured per point, in-sample
and leave-one-point-out. Prompts are random token ids with prefix caching off, so nothing
is served from the cache.

Clocks: "wall" is perf_counter; "cpu" (the default) is this process's CPU time divided by
torch's thread count, i.e. the wall time a step takes when the process has its cores to
itself (torch's pool threads spin while idle, so a step keeps every thread on a core). On a
machine shared with other busy processes wall time mostly measures the others.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

import numpy as np

from fleetlm.hardware.devices import Device
from fleetlm.hardware.perfmodel import ModelShape, Perf, decode_work, prefill_work

DEFAULT_POINTS = ((1, 64), (1, 256), (4, 64), (4, 256), (16, 64), (16, 256))


@dataclass(frozen=True)
class Point:
    batch: int
    prompt: int
    prefill_s: float  # median seconds of the step that computes all `batch` prompts
    decode_s: float  # median seconds of one decode step at this batch


def clock(kind: str):
    """A function returning seconds on the chosen clock (see the module docstring)."""
    if kind == "wall":
        return time.perf_counter
    if kind != "cpu":
        raise ValueError(f"clock must be cpu or wall, got {kind!r}")
    import torch

    threads = torch.get_num_threads()
    return lambda: time.process_time() / threads


def run_sweep(points=DEFAULT_POINTS, *, model: str = "gemma-3-270m", repeats: int = 3, decode_steps: int = 8,
              log=print, engine_kwargs: dict | None = None, clock_kind: str = "cpu"):
    """Returns (engine, [Point]); the engine is returned so its shape and dtype can be read."""
    from fleetlm.config import EngineConfig
    from fleetlm.engine.engine import LLMEngine
    from fleetlm.engine.sampling_params import SamplingParams

    max_b = max(b for b, _ in points)
    budget = max(b * p for b, p in points)
    cfg = EngineConfig(model=model, max_num_seqs=max_b, max_num_batched_tokens=budget,
                       enable_prefix_caching=False, **(engine_kwargs or {}))
    t0 = time.perf_counter()
    engine = LLMEngine(cfg)
    log(f"loaded {model} ({engine.loaded.dtype}, {engine.loaded.device}) in {time.perf_counter() - t0:.1f} s")
    now = clock(clock_kind)
    rng = np.random.default_rng(0)
    vocab = min(engine.vocab_size, 200_000)
    params = SamplingParams(max_tokens=1 + decode_steps, temperature=0.0, ignore_eos=True)
    out = []
    for n, (b, plen) in enumerate(points, 1):
        pre, dec = [], []
        for _ in range(repeats + 1):  # the first round warms up this shape and is dropped
            for _ in range(b):
                engine.add(engine.make_request(rng.integers(10, vocab, plen).tolist(), params))
            times = []
            while engine.has_unfinished_requests():
                t = now()
                engine.step()
                times.append(now() - t)
            pre.append(times[0])
            dec.append(statistics.median(times[1:]))
        p = Point(b, plen, statistics.median(pre[1:]), statistics.median(dec[1:]))
        log(f"[{n}/{len(points)}] batch {b:>3} prompt {plen:>5}: prefill {1e3 * p.prefill_s:8.1f} ms, "
            f"decode step {1e3 * p.decode_s:7.1f} ms")
        out.append(p)
    return engine, out


def engine_dtype(engine) -> str:
    """The perf model's name for the dtype a loaded engine runs in (bf16 or fp32)."""
    import torch

    return "fp32" if engine.loaded.dtype == torch.float32 else "bf16"


def predict(shape: ModelShape, device: Device, p: Point, dtype: str = "bf16") -> tuple[float, float]:
    perf = Perf(shape, device, 1, dtype=dtype)
    return (perf.step_time(prefill_work(p.prompt, batch=p.batch)),
            perf.step_time(decode_work(p.batch, p.prompt + 4)))


def fit(shape: ModelShape, device: Device, points: list[Point], dtype: str = "bf16") -> Device:
    """`device` with the three efficiency factors fitted to `points`, for an engine in `dtype`."""
    from scipy.optimize import least_squares

    def resid(x):
        d = replace(device, compute_eff=x[0], bandwidth_eff=x[1], step_overhead_s=x[2])
        r = []
        for p in points:
            pre, dec = predict(shape, d, p, dtype)
            r += [np.log(pre / p.prefill_s), np.log(dec / p.decode_s)]
        return r

    # Efficiencies are fractions of the peaks measured on this same machine, so they are capped
    # at 1: above it, the bandwidth and per-step overhead terms trade off freely (a small
    # model's decode step is mostly overhead) and the fit would drift to unphysical values.
    sol = least_squares(resid, x0=[0.5, 0.5, 0.005], bounds=([0.01, 0.01, 0.0], [1.0, 1.0, 1.0]))
    return replace(device, compute_eff=float(sol.x[0]), bandwidth_eff=float(sol.x[1]),
                   step_overhead_s=float(sol.x[2]))


def report(shape: ModelShape, device: Device, points: list[Point], fitted: Device, log=print,
           dtype: str = "bf16") -> int:
    """Prints the table; returns how many points have both predictions within 20%."""
    loo = [fit(shape, device, points[:i] + points[i + 1:], dtype) for i in range(len(points))]
    log(f"\nfitted: compute_eff {fitted.compute_eff:.3f}, bandwidth_eff {fitted.bandwidth_eff:.3f}, "
        f"step_overhead {1e3 * fitted.step_overhead_s:.2f} ms  (peak {device.peak_flops(dtype) / 1e9:.0f} {dtype} GFLOP/s, "
        f"{device.mem_bw_gbps:.1f} GB/s measured)")
    log(f"{'batch':>5} {'prompt':>6} | {'prefill ms':>10} {'pred':>8} {'err':>6} {'held-out':>8} | "
        f"{'decode ms':>9} {'pred':>7} {'err':>6} {'held-out':>8}")
    within = 0
    for i, p in enumerate(points):
        pre, dec = predict(shape, fitted, p, dtype)
        lpre, ldec = predict(shape, loo[i], p, dtype)
        e = [pre / p.prefill_s - 1, lpre / p.prefill_s - 1, dec / p.decode_s - 1, ldec / p.decode_s - 1]
        within += abs(e[0]) <= 0.2 and abs(e[2]) <= 0.2
        log(f"{p.batch:>5} {p.prompt:>6} | {1e3 * p.prefill_s:>10.1f} {1e3 * pre:>8.1f} {100 * e[0]:>+5.0f}% "
            f"{100 * e[1]:>+7.0f}% | {1e3 * p.decode_s:>9.1f} {1e3 * dec:>7.1f} {100 * e[2]:>+5.0f}% {100 * e[3]:>+7.0f}%")
    log(f"points with prefill and decode both within 20%: {within}/{len(points)}")
    return within
