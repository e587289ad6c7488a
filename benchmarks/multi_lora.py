"""Multi-LoRA throughput on gemma-3-270m: the engine benchmark's workload with every request
on one of 1, 16 or 128 distinct rank-16 adapters, relative to the base model alone, plus
`transformers` + PEFT switching adapters per request (`set_adapter`), as a user without a
multi-LoRA server would.

Workload (fixed seed, as benchmarks/engine_throughput.py): 64 requests, prompt lengths
uniform in [32, 512] tokens, 128 greedy output tokens, all arriving at t=0. Adapter i of N
serves requests i, i+N, ... Adapters are random rank-16 LoRA weights in PEFT's format on
q_proj and v_proj (PEFT's default targets for Gemma); `--all-linear` adds a row with
adapters on all seven projections. Each measurement runs in its own process.

    python benchmarks/multi_lora.py            # full run (~10 minutes on 2 cores)
    python benchmarks/multi_lora.py --quick    # 16 requests, 64 output tokens

Last line: `throughput at 128 adapters / base: X.XX`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_throughput import RESULTS, isolated, workload  # noqa: E402

QV = ("q_proj", "v_proj")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_adapters(folder: Path, base: Path, n: int, targets, rank: int = 16, seed: int = 0) -> list[str]:
    """n PEFT-format adapters with random weights (written directly: same files PEFT writes)."""
    from safetensors.torch import save_file

    cfg = json.loads((base / "config.json").read_text())
    hidden, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or hidden // heads
    inter = cfg["intermediate_size"]
    io = {"q_proj": (hidden, heads * hd), "k_proj": (hidden, kv * hd), "v_proj": (hidden, kv * hd),
          "o_proj": (heads * hd, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
          "down_proj": (inter, hidden)}
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        out = folder / f"adapter-{i}"
        out.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for layer in range(cfg["num_hidden_layers"]):
            for proj in targets:
                owner = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                d_in, d_out = io[proj]
                key = f"base_model.model.model.layers.{layer}.{owner}.{proj}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(rank, d_in, generator=g) * d_in**-0.5
                tensors[f"{key}.lora_B.weight"] = torch.randn(d_out, rank, generator=g) * 0.01
        save_file(tensors, str(out / "adapter_model.safetensors"))
        (out / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(targets),
            "bias": "none", "base_model_name_or_path": str(base), "task_type": "CAUSAL_LM"}))
        paths.append(str(out))
    return paths


def run_engine(base: str, prompts, max_tokens: int, adapters: list[str]) -> dict:
    from fleetlm import LLM, SamplingParams
    from fleetlm.engine.lora import LoRARequest

    n = len(adapters)
    llm = LLM(base, enable_lora=n > 0, max_loras=max(n, 1), max_lora_rank=16)
    loras = [LoRARequest(f"a{i % n}", adapters[i % n]) for i in range(len(prompts))] if n else None
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    llm.generate(prompt_token_ids=[prompts[0][:64]], sampling_params=SamplingParams(max_tokens=4, temperature=0))
    t0 = time.monotonic()
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params, lora_request=loras)
    wall = time.monotonic() - t0
    n_out = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tok_s": n_out / wall, "wall": wall,
            "ttft": statistics.median(o.metrics.first_token_time - t0 for o in outs)}


def run_peft_switching(base: str, prompts, max_tokens: int, adapters: list[str]) -> dict:
    """transformers + PEFT with the adapters loaded, `set_adapter` before each request, one
    request at a time (a PeftModel serves one active adapter per forward). Only the first 8
    are loaded: `load_adapter` of all 128 takes minutes, and switching costs the same."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0")
    adapters = adapters[:8]
    for i, path in enumerate(adapters[1:], start=1):
        model.load_adapter(path, adapter_name=f"a{i}")
    model.eval()
    n_out = 0
    with torch.inference_mode():
        t0 = time.monotonic()
        for i, p in enumerate(prompts):
            model.set_adapter(f"a{i % len(adapters)}")
            out = model.generate(input_ids=torch.tensor([p]), max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
            n_out += out.shape[1] - len(p)
        wall = time.monotonic() - t0
    return {"tok_s": n_out / wall, "wall": wall, "ttft": float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 requests, 64 output tokens")
    ap.add_argument("--all-linear", action="store_true", help="also 128 adapters on all 7 projections")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs per setting; medians reported")
    ap.add_argument("--peft-requests", type=int, default=8,
                    help="requests for the PEFT baseline (it runs one at a time; tok/s is what counts)")
    args = ap.parse_args()
    from fleetlm.models.embedded import resolve_model_path

    base = resolve_model_path("gemma-3-270m")
    n_req, max_tokens = (16, 64) if args.quick else (64, 128)
    cfg = json.loads((base / "config.json").read_text())
    prompts = workload(n_req, cfg["vocab_size"], cfg.get("bos_token_id", 2))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        qv = write_adapters(Path(tmp) / "qv", base, 128, QV)
        runs = [("base model, no adapters", []), ("1 adapter", qv[:1]), ("16 adapters", qv[:16]),
                ("128 adapters", qv)]
        if args.all_linear:
            runs.append(("128 adapters, all 7 projections", write_adapters(Path(tmp) / "all", base, 128, ALL)))
        measured: dict[str, list[dict]] = {name: [] for name, _ in runs}
        for rep in range(args.repeats):  # interleaved, so a busy moment hits every setting alike
            for name, adapters in runs:
                print(f"fleetlm: {name} (run {rep + 1}/{args.repeats}) ...", flush=True)
                measured[name].append(isolated(run_engine, str(base), prompts, max_tokens, adapters))
        for name, _ in runs:
            rs = measured[name]
            rows.append((f"fleetlm, {name}", {k: statistics.median(r[k] for r in rs) for k in rs[0]}))
        k = min(args.peft_requests, n_req)
        print(f"transformers + PEFT set_adapter per request ({k} requests, 8 adapters loaded) ...", flush=True)
        rows.append(("transformers+PEFT, set_adapter per request",
                     isolated(run_peft_switching, str(base), prompts[:k], max_tokens, qv)))
    base_tok_s = rows[0][1]["tok_s"]
    import os

    lines = [f"multi-LoRA throughput, gemma-3-270m, {n_req} requests x {max_tokens} tokens, rank 16 "
             f"(q_proj, v_proj unless stated), torch threads {torch.get_num_threads()}, medians of "
             f"{args.repeats} interleaved runs, load average at the end {os.getloadavg()[0]:.1f}",
             f"{'engine':58s} {'tok/s':>8s} {'/ base':>7s} {'TTFT p50 s':>11s}"]
    for name, r in rows:
        lines.append(f"{name:58s} {r['tok_s']:8.1f} {r['tok_s'] / base_tok_s:7.2f} {r['ttft']:11.2f}")
    at128 = next(r for n, r in rows if n == "fleetlm, 128 adapters")["tok_s"]
    peft = rows[-1][1]["tok_s"]
    lines.append(f"fleetlm at 128 adapters / transformers+PEFT switching: {at128 / peft:.1f}x")
    lines.append(f"throughput at 128 adapters / base: {at128 / base_tok_s:.2f}")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("multi_lora_quick.txt" if args.quick else "multi_lora.txt")).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
