"""Weight-only quantization on gemma-3-270m: single-stream decode speed and closeness to the
unquantized model, bf16 / fp32 / int8 / int4 engines side by side in one process.

    python benchmarks/quant_check.py                    # speed (median of 3) + accuracy
    python benchmarks/quant_check.py --group-sizes 32,64,128 --repeats 5
    python benchmarks/quant_check.py --threads 1     # on a busy machine: CPU ms/token is steadier

Speed: one request at a time, a 20-token prompt, 128 new tokens, greedy, EOS ignored; the
engines take turns (round-robin over the repeats) so that load from other processes on the
machine falls on all of them alike. Decode ms/token is (finish - first token) / 127; tok/s
is 128 / the request's whole wall time (prefill included).

Accuracy, against the unquantized engine of the same compute dtype (and bf16 against fp32,
the floor any bf16 engine sits on): the max-abs-diff of the logits the first token is
sampled from, over 5 prompts (teacher-forced: same input), and over 128-token greedy
continuations of the same prompts the share of positions with the same token and the
tokens before the first difference (median).

The table is also written to benchmarks/results/quant_check.txt.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Photosynthesis is the process by which green plants turn sunlight into",
    "Dear hiring manager, I am writing to apply for the position of",
    "The three most important rules of chess for a beginner are",
]
SPEED_TEXT = ("In a small village at the edge of a great forest there lived an old clockmaker who "
              "repaired every clock in the valley")


class LogitsSpy:
    """Records the logits each request's tokens are sampled from (engine.sample wrapped)."""

    def __init__(self):
        import fleetlm.engine.engine as engine_mod

        self.mod, self.real, self.seen = engine_mod, engine_mod.sample, {}

    def __enter__(self):
        def spy(logits, seqs, gen):
            for row, seq in zip(logits, seqs):
                self.seen.setdefault(seq.request_id, []).append(row.float().clone())
            return self.real(logits, seqs, gen)

        self.mod.sample = spy
        return self

    def __exit__(self, *exc):
        self.mod.sample = self.real


def weight_mib(model: torch.nn.Module) -> float:
    """Weights the model holds, MiB: parameters, buffers and plain tensor attributes (oneDNN's
    packed weights are the latter), each storage once; rope tables excluded."""
    seen, total = set(), 0
    for name, mod in model.named_modules():
        if "ropes" in name:
            continue
        tensors = [*mod._parameters.values(), *mod._buffers.values(),
                   *(v for v in vars(mod).values() if isinstance(v, torch.Tensor))]
        for t in tensors:
            key = t.untyped_storage().data_ptr() if t is not None and t.layout == torch.strided else id(t)
            if t is not None and key not in seen:  # (a packed oneDNN weight has no plain storage)
                seen.add(key)
                total += t.numel() * t.element_size()
    return total / 2**20


def speed(llm, prompt_ids: list[int], max_tokens: int) -> tuple[float, float, float]:
    """(decode ms/token, end-to-end tok/s, CPU ms/token) of one request alone. CPU time is
    this process's, prefill included: on a machine shared with other work it counts only
    the time the engine ran (with one thread; torch's workers spin-wait, adding to it)."""
    from fleetlm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    t0, c0 = time.monotonic(), time.process_time()
    out = llm.generate(prompt_token_ids=[prompt_ids], sampling_params=params)[0]
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    m, n = out.metrics, len(out.outputs[0].token_ids)
    return (m.finished_time - m.first_token_time) / (n - 1) * 1e3, n / wall, cpu / n * 1e3


def continuations(llm, prompts: list[str], max_tokens: int) -> tuple[list[list[int]], torch.Tensor]:
    """(greedy tokens per prompt, first-token logits (prompts, vocab))."""
    from fleetlm import SamplingParams

    with LogitsSpy() as spy:
        outs = llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    return [o.outputs[0].token_ids for o in outs], torch.stack([spy.seen[o.request_id][0] for o in outs])


def agreement(ours: list[list[int]], ref: list[list[int]]) -> tuple[float, float]:
    """(share of positions with the same token, median tokens before the first difference)."""
    same = sum(a == b for x, y in zip(ours, ref) for a, b in zip(x, y)) / sum(len(y) for y in ref)
    prefix = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(y)) for x, y in zip(ours, ref)]
    return same, statistics.median(prefix)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--group-sizes", default="64", help="int4 group sizes to measure, comma list")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    from fleetlm import LLM

    configs = [("bf16", "bfloat16", None, 64), ("fp32", "float32", None, 64), ("int8", "bfloat16", "int8", 64)]
    configs += [(f"int4 g{g}", "bfloat16", "int4", int(g)) for g in args.group_sizes.split(",")]
    engines = {}
    for name, dtype, quant, group in configs:
        t0 = time.monotonic()
        engines[name] = LLM(args.model, dtype=dtype, quantization=quant, quantization_group_size=group,
                            num_threads=args.threads, max_num_seqs=8, max_model_len=1024, kv_cache_memory_gb=0.1)
        print(f"loaded {name} in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    tok = engines["bf16"].tokenizer
    speed_ids = tok(SPEED_TEXT).input_ids[:20]
    assert len(speed_ids) == 20
    for llm in engines.values():  # warm-up: oneDNN primitives, allocator
        speed(llm, speed_ids, 8)
    timings: dict[str, list[tuple[float, float, float]]] = {name: [] for name in engines}
    for i in range(args.repeats):
        for name, llm in engines.items():
            timings[name].append(speed(llm, speed_ids, args.max_tokens))
        print(f"round {i + 1}: " + ", ".join(f"{n} {t[-1][0]:.1f} ms/tok" for n, t in timings.items()),
              file=sys.stderr)
    outputs = {name: continuations(llm, PROMPTS, args.max_tokens) for name, llm in engines.items()}

    lines = [f"gemma-3-270m, single stream: 20-token prompt, {args.max_tokens} new tokens, greedy; "
             f"median of {args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end",
             f"{'engine':<10} {'weights MiB':>11} {'decode ms/tok':>13} {'tok/s':>7} {'speed-up':>8} "
             f"{'CPU ms/tok':>10}  "
             f"{'vs':<5} {'logits max|diff|':>16} {'same tokens':>11} {'same prefix':>11}"]
    base_ms = statistics.median(t[0] for t in timings["bf16"])
    for name, _, quant, _ in configs:
        ms = statistics.median(t[0] for t in timings[name])
        tps = statistics.median(t[1] for t in timings[name])
        cpu_ms = statistics.median(t[2] for t in timings[name])
        ref = "fp32" if name == "bf16" else ("bf16" if quant else None)
        acc = ""
        if ref:
            (toks, logits), (ref_toks, ref_logits) = outputs[name], outputs[ref]
            same, prefix = agreement(toks, ref_toks)
            acc = f"{ref:<5} {(logits - ref_logits).abs().max().item():>16.3f} {same:>10.0%} {prefix:>11.0f}"
        mib = weight_mib(engines[name].engine.loaded.model)
        lines.append(f"{name:<10} {mib:>11.0f} {ms:>13.2f} {tps:>7.1f} {base_ms / ms:>7.2f}x {cpu_ms:>10.2f}  {acc}")
    lines.append("logit scale: max |logit| over the prompts' first tokens (bf16) = "
                 f"{outputs['bf16'][1].abs().max().item():.1f}")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quant_check.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
