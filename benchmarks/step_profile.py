"""Where one decode step's time goes: torch.profiler over the engine's steps once `batch`
requests are all decoding (one new token each), split by region.

Used by `engine_throughput.py --profile`. The engine is left as it is: its parts are wrapped
from outside with `record_function` ranges (scheduler, input preparation, attention, linears,
the rest of the forward, LM head, sampler, the rest of the step). For each region the table
gives the host (CPU thread) time, the part of it inside torch ops (dispatch and kernel
launches; on a CPU the compute itself) and the rest (Python and other host work), and on
CUDA the device time of the kernels it launched. A step whose device time is far below its
wall time is bound by the host. Numbers are per step, averaged over the profiled steps; the
profiler adds overhead, so the unprofiled step time is printed beside them.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

PREFIX = "fleet/"
OP = "kernel"  # an annotation that stands for one op (a custom kernel call), not a region
REGIONS = {  # annotation -> row label, in table order
    "schedule": "scheduler",
    "prepare_inputs": "prepare inputs (host -> device tensors)",
    "attention": "attention (paged, all layers)",
    "linears": "linears (q/k/v/o, MLP)",
    "forward": "forward, rest (embed, norms, rope, act.)",
    "lm_head": "LM head (logits)",
    "sampler": "sampler",
    "step": "step, rest (update, stop checks, outputs)",
}
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


def _annotate(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(PREFIX + name):
            return fn(*args, **kwargs)

    return wrapper


def instrument(engine) -> None:
    """Wrap the engine's parts in named ranges (instance and module attributes; for profiling only)."""
    import fleetlm.engine.architectures.common as common
    import fleetlm.engine.engine as engine_mod

    model = engine.runner.model
    engine.scheduler.schedule = _annotate("schedule", engine.scheduler.schedule)
    engine.runner.prepare_inputs = _annotate("prepare_inputs", engine.runner.prepare_inputs)
    common.paged_attention = _annotate("attention", common.paged_attention)
    engine_mod.sample = _annotate("sampler", engine_mod.sample)
    model.compute_logits = _annotate("lm_head", model.compute_logits)
    model.forward = _annotate("forward", model.forward)
    for module in model.modules():  # nn.Linear, and the CPU's PackedLinear and LoRA wrappers
        if hasattr(module, "out_features") and module is not getattr(model, "lm_head", None):
            module.forward = _annotate("linears", module.forward)
    # the paged-attention kernels are not torch ops (a pybind function, Triton launches): mark
    # their calls so that their time counts as op time, not Python
    runner = engine.runner
    if runner.decode_kernel is not None:
        runner.decode_kernel = _annotate(OP, runner.decode_kernel)
    if runner.chunk_kernel is not None:
        runner.chunk_kernel = _annotate(OP, runner.chunk_kernel)


def _region(evt) -> str | None:
    return evt.name[len(PREFIX):] if evt.name.startswith(PREFIX) and evt.name != PREFIX + OP else None


def summarize(events, steps: int) -> dict:
    """Per-step totals by region from a profiler's events: host, host in ops, device (µs), the
    same per (region, op), and counts of syncs, kernel launches and host<->device copies."""
    cpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    host, ops, device = defaultdict(float), defaultdict(float), defaultdict(float)
    counts = defaultdict(float)
    top = defaultdict(lambda: [0.0, 0.0])  # (region, op name) -> [host µs, device µs]
    for e in cpu:
        name = _region(e)
        if name is not None:  # a region's own time: its span less the regions nested in it
            host[name] += e.cpu_time_total - sum(c.cpu_time_total for c in e.cpu_children if _region(c))
            continue
        owner = e.cpu_parent
        while owner is not None and _region(owner) is None:
            owner = owner.cpu_parent
        if owner is None:
            continue  # outside the profiled steps (the synchronisation between them)
        region = _region(owner)
        if e.cpu_parent is owner:  # a top-level op of its region, not nested in another op
            ops[region] += e.cpu_time_total
            device[region] += e.device_time_total
            top[(region, e.name)][0] += e.cpu_time_total
            top[(region, e.name)][1] += e.device_time_total
        if e.name in SYNCS:
            counts["syncs"] += 1
            counts["sync_us"] += e.cpu_time_total
        elif e.name in LAUNCHES:
            counts["launches"] += 1
        elif e.name.startswith("cudaMemcpy"):
            counts["copies"] += 1
        elif e.name == "aten::_local_scalar_dense":
            counts["item"] += 1
    per = lambda d: {k: v / steps for k, v in d.items()}  # noqa: E731
    top = {k: (h / steps, d / steps) for k, (h, d) in top.items()}
    return {"host": per(host), "ops": per(ops), "device": per(device), "counts": per(counts), "top": top}


def decode_ready(engine, prompts: list[list[int]], temperature: float = 0.0) -> list:
    """Queue the prompts and step until every one has its first token: from then on each step
    is `len(prompts)` decodes, greedy or at `temperature`. Returns the requests (abort them when done)."""
    from fleetlm import SamplingParams

    # long enough that no request ends while the last prompts are still being prefilled
    params = SamplingParams(max_tokens=4096, temperature=temperature, ignore_eos=True)
    reqs = [engine.make_request(p, params) for p in prompts]
    for r in reqs:
        engine.add(r)
    while not all(s.num_tokens > len(r.prompt_ids) and s.num_computed_tokens == s.num_tokens - 1
                  for r in reqs for s in r.seqs):
        if not engine.step() and not engine.scheduler.has_work():
            raise RuntimeError("the engine stopped before every request was decoding")
    if any(r.finished for r in reqs):
        raise RuntimeError("a request ended before every request was decoding (max_model_len too short)")
    return reqs


def profile_decode_step(engine, prompts: list[list[int]], *, warmup: int = 3, timed: int = 5,
                        profiled: int = 3, temperature: float = 0.0) -> str:
    """Profile decode steps of `engine` over `prompts` (all decoding at once); returns the table."""
    dev = engine.runner.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    reqs = decode_ready(engine, prompts, temperature)
    for _ in range(warmup):
        engine.step()
    walls = []
    for _ in range(timed):
        sync()
        t0 = time.perf_counter()
        engine.step()
        sync()
        walls.append(time.perf_counter() - t0)
    ctx = [len(p) for p in prompts]
    decoding = "greedy" if not temperature else f"temperature {temperature}"
    title = (f"decode step profile: batch {len(prompts)} decodes ({decoding}), prompts of {min(ctx)}-{max(ctx)} "
             f"tokens, device {dev.type}, dtype {str(engine.loaded.dtype).removeprefix('torch.')}, "
             f"attention kernels: decode {_kernel_name(engine.runner.decode_kernel)}, "
             f"chunks {_kernel_name(engine.runner.chunk_kernel)}")
    instrument(engine)
    step = _annotate("step", engine.step)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(profiled):
            sync()
            step()
            sync()
    for r in reqs:
        engine.abort(r.request_id)
    s = summarize(prof.events(), profiled)
    return "\n".join([title, *table(s, statistics.median(walls), dev.type == "cuda")])


def _kernel_name(kernel) -> str:
    if kernel is None:
        return "torch SDPA"
    return ("Triton " if "triton" in (kernel.__module__ or "") else "C++ ") + kernel.__name__


def table(s: dict, wall_s: float, cuda: bool) -> list[str]:
    host, ops, device, counts = s["host"], s["ops"], s["device"], s["counts"]
    total = sum(host.values())
    dev_col = lambda us: f"{us / 1e3:>10.2f}" if cuda else f"{'-':>10}"  # noqa: E731
    lines = [f"step wall, unprofiled: {wall_s * 1e3:.2f} ms (median); profiled: {total / 1e3:.2f} ms "
             f"(profiler overhead included; the shares below are of the profiled step)",
             f"{'region':<44} {'host ms':>8} {'in ops':>8} {'python':>8} {'device ms':>10} {'share':>6}"]
    for key, label in REGIONS.items():
        h, o = host.get(key, 0.0), ops.get(key, 0.0)
        lines.append(f"{label:<44} {h / 1e3:>8.2f} {o / 1e3:>8.2f} {(h - o) / 1e3:>8.2f} "
                     f"{dev_col(device.get(key, 0.0))} {h / total:>6.1%}")
    in_ops = sum(ops.values())
    busy = sum(device.values())
    lines.append(f"{'total':<44} {total / 1e3:>8.2f} {in_ops / 1e3:>8.2f} {(total - in_ops) / 1e3:>8.2f} "
                 f"{dev_col(busy)} {1:>6.0%}")
    lines.append("in ops: host time inside torch ops (dispatch, launches; on a CPU also the compute); "
                 "python: the rest of the host time")
    lines.append(f"per step: {counts.get('item', 0):.0f} .item() reads, {counts.get('syncs', 0):.0f} device "
                 f"syncs ({counts.get('sync_us', 0) / 1e3:.2f} ms blocked), {counts.get('copies', 0):.0f} "
                 f"host<->device copies, {counts.get('launches', 0):.0f} kernel launches")
    heaviest = sorted(s["top"].items(), key=lambda kv: -max(kv[1][1] if cuda else 0.0, kv[1][0]))[:8]
    lines.append(f"heaviest ops per step: {'region':<28} {'op':<34} {'host ms':>8} {'device ms':>10}")
    for (region, name), (h, d) in heaviest:
        name = "paged-attention kernel call" if name == PREFIX + OP else name
        lines.append(f"{'':<22} {REGIONS[region].split(' (')[0]:<28} {name:<34} {h / 1e3:>8.2f} {dev_col(d)}")
    if cuda:
        lines.append(f"device busy {busy / 1e3:.2f} ms of a {total / 1e3:.2f} ms step: {1 - busy / total:.0%} of "
                     f"the step the GPU waits on the host")
    return lines


def profile_llm(folder, prompts: list[list[int]], dtype: str, device: str, *, temperature: float = 0.0,
                **engine_kw) -> str:
    """Load `folder` in a fresh engine and profile its decode step over `prompts`."""
    from fleetlm import LLM

    llm = LLM(str(folder), dtype=dtype, device=device, **engine_kw)
    return profile_decode_step(llm.engine, prompts, temperature=temperature)
