"""`fleet hardware devices|estimate|calibrate` and `fleet plan`.

    fleet hardware devices
    fleet hardware estimate --model Llama-3.1-8B --device L4 --prompt 2048 --output 128 --batch 8
    fleet hardware calibrate                       # this machine, fleetlm's engine, ~2 min
    fleet plan --model Llama-3.1-8B --trace ../shared/data/traces/azure_llm_inference_2023_code.csv \\
               --slo ttft_p99=2,tpot_p99=0.1 --plot benchmarks/results/plan_8b

`add_hardware_parser(subparsers)` adds both commands to the `fleet` parser. `fleet plan`
prints the heterogeneous plan, the best single-device-type plan (both validated in the
simulator) and, as its last line, `saving vs best single device type: NN%`.
"""

from __future__ import annotations

import json
import sys

from fleetlm.config import EngineConfig, default_of, given


def add_hardware_parser(subparsers) -> None:
    # the performance model's defaults: perfmodel imports no torch, so `fleet --help` stays fast
    from fleetlm.hardware.perfmodel import Perf

    h = subparsers.add_parser("hardware", help="device catalog, performance estimates, calibration")
    sub = h.add_subparsers(dest="hardware_command", required=True)
    d = sub.add_parser("devices", help="list the device catalog (and user devices)")
    d.add_argument("--config", help="fleet.toml with [[device]] tables")
    d.add_argument("--local", action="store_true", help="also measure this machine (~3 s)")
    d.set_defaults(func=cmd_devices)
    e = sub.add_parser("estimate", help="TTFT, TPOT, tokens/s and $ per million tokens of a model on a device")
    e.add_argument("--model", required=True,
                   help="Llama-3.1-8B | Llama-3.1-70B | Qwen2.5-7B | Qwen2.5-72B | config.json")
    e.add_argument("--device", required=True)
    e.add_argument("--tp", type=int, help=f"devices per replica (tensor parallel) {default_of(Perf, 'tp')}")
    e.add_argument("--dtype", choices=["bf16", "fp8", "fp32"],
                   help="fp32: weights, KV and matmuls in fp32 (the engine on a CPU without native bf16) "
                        + default_of(Perf, "dtype"))
    e.add_argument("--prompt", type=int, default=1024)
    e.add_argument("--output", type=int, default=128)
    e.add_argument("--batch", type=int, default=1)
    e.add_argument("--config", help="fleet.toml with [[device]] tables")
    e.set_defaults(func=cmd_estimate)
    c = sub.add_parser("calibrate", help="fit the efficiency factors to this machine with fleetlm's engine")
    c.add_argument("--model", help=f"engine model {default_of(EngineConfig, 'model')}")
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--out", help="write the fitted local device (JSON, Device fields) here")
    c.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                   help="cpu: process CPU time / threads (robust on a shared machine); wall: perf_counter")
    c.set_defaults(func=cmd_calibrate)

    p = subparsers.add_parser("plan", help="cheapest device mix for a model, a trace and an SLO")
    p.add_argument("--model", required=True, help="named shape or config.json")
    p.add_argument("--trace", required=True, help="Azure LLM inference trace CSV")
    p.add_argument("--slo", required=True, help="ttft_p99=SECONDS,tpot_p99=SECONDS[,attainment=0.99]")
    p.add_argument("--devices", help="comma-separated device names (default: every GPU in the catalog)")
    p.add_argument("--exclude", default="", help="comma-separated device names to leave out")
    p.add_argument("--config", help="fleet.toml with [[device]] tables (added to, or replacing, the catalog)")
    p.add_argument("--dtype", choices=["bf16", "fp8", "fp32"],
                   help=f"weights and matmuls; devices without a peak for it are left out {default_of(Perf, 'dtype')}")
    p.add_argument("--rate-scale", type=float, default=1.0, help="replay the trace this many times faster")
    p.add_argument("--slices", type=int, default=4, help="slices per bucket (finer: better packing, slower)")
    p.add_argument("--no-disaggregate", action="store_true", help="no prefill/decode split pools")
    p.add_argument("--prompt-edges", default=None, help="bucket edges in prompt tokens, e.g. 256,1024,4096")
    p.add_argument("--plot", help="write PREFIX_cost.png and PREFIX_routes.png")
    p.add_argument("--json", help="write the plans here (JSON)")
    p.set_defaults(func=cmd_plan)


def _devices(config: str | None, local=None):
    from fleetlm.hardware.devices import get_devices

    user = []
    if config:
        from fleetlm.fleet_toml import load_fleet_toml

        user = load_fleet_toml(config).devices
    return get_devices(user=user, local=local)


def cmd_devices(args) -> int:
    from fleetlm.hardware.devices import measure_local_cpu

    devs = _devices(args.config, measure_local_cpu() if args.local else None)
    print(f"{'device':<16} {'bf16 TF':>8} {'fp8 TF':>7} {'fp32 TF':>7} {'GB/s':>7} {'GB':>5} {'link GB/s':>9} "
          f"{'$/h':>6}  source")
    for d in devs.values():
        fp8 = f"{d.fp8_tflops:.0f}" if d.fp8_tflops else "-"
        fp32 = f"{d.fp32_tflops:.3g}" if d.fp32_tflops else "-"
        print(f"{d.name:<16} {d.bf16_tflops:>8.3g} {fp8:>7} {fp32:>7} {d.mem_bw_gbps:>7.0f} {d.mem_gb:>5.0f} "
              f"{d.interconnect_gbps:>9.0f} {d.usd_per_hour:>6.2f}  {d.source}")
    return 0


def cmd_estimate(args) -> int:
    from fleetlm.hardware.perfmodel import Perf, estimate, resolve_shape

    devs = _devices(args.config)
    if args.device not in devs:
        print(f"error: unknown device {args.device!r}; known: {', '.join(devs)}", file=sys.stderr)
        return 2
    try:
        perf = given(Perf, shape=resolve_shape(args.model), device=devs[args.device], tp=args.tp, dtype=args.dtype)
        e = estimate(perf, prompt=args.prompt, output=args.output, batch=args.batch)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{perf.shape.name} on {perf.name} ({perf.dtype}): KV cache {perf.kv_capacity_tokens():,} tokens, "
          f"largest batch at {args.prompt + args.output} tokens: {e.max_batch}")
    print(f"TTFT {1e3 * e.ttft_s:.1f} ms | TPOT {1e3 * e.tpot_s:.1f} ms at batch {args.batch} | "
          f"{e.output_tok_s:.0f} output tok/s | ${e.usd_per_mtok_output:.3f} per M output tokens, "
          f"${e.usd_per_mtok_prompt:.3f} per M prompt tokens (at ${perf.usd_per_hour:.2f}/h)")
    return 0


def cmd_calibrate(args) -> int:
    import os
    from dataclasses import asdict

    from fleetlm.hardware import calibrate as cal
    from fleetlm.hardware.devices import measure_local_cpu
    from fleetlm.hardware.perfmodel import shape_from_config

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; clock: {args.clock}", flush=True)
    print("measuring this machine's GEMM peaks (bf16, fp32) and memory bandwidth ...", flush=True)
    local = measure_local_cpu(now=cal.clock(args.clock))
    print(f"  bf16 {local.bf16_tflops * 1e3:.0f} GFLOP/s, fp32 {local.fp32_tflops * 1e3:.0f} GFLOP/s, "
          f"{local.mem_bw_gbps:.1f} GB/s ({local.source})", flush=True)
    model = given(EngineConfig, model=args.model).model  # the sweep and the shape read below need the same id
    engine, points = cal.run_sweep(model=model, repeats=args.repeats, clock_kind=args.clock,
                                   log=lambda m: print(m, flush=True))
    shape = shape_from_config(engine.loaded.path if hasattr(engine.loaded, "path") else _model_dir(model))
    dtype = cal.engine_dtype(engine)  # weights and KV counted at the engine's bytes per element
    fitted = cal.fit(shape, local, points, dtype)
    within = cal.report(shape, local, points, fitted, dtype=dtype)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(asdict(fitted), f, indent=2)
        print(f"wrote {args.out}")
    return 0 if within >= 6 else 1


def _model_dir(model: str):
    from fleetlm.models.embedded import resolve_model_path

    return resolve_model_path(model)


def cmd_plan(args) -> int:
    from fleetlm.hardware.perfmodel import Perf
    from fleetlm.hardware.report import run_plan

    if args.dtype is None:  # run_plan reads the flag itself (and prints it): give it Perf's default
        args.dtype = Perf.dtype
    try:
        return run_plan(args, _devices(args.config))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
