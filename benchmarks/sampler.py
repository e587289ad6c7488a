"""What sampling at a temperature costs, against greedy decoding, on the embedded gemma-3-270m.

    python benchmarks/sampler.py               # both tables
    python benchmarks/sampler.py --requests 16

1. One draw per row over a (rows, 262,144) fp32 distribution: the exponential race
   (argmax p / E with E ~ Exp(1), a random number per vocabulary entry, as the sampler drew
   before) against the sampler's inverse-CDF `draw` (one uniform number per row), softmax
   included in both, medians of 20.
2. The engine end to end: `--requests` requests (prompts of 64-128 tokens, 128 output tokens,
   EOS ignored) decoded greedily and at temperature 1.0; output tokens per second.

Writes benchmarks/results/sampler.txt.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
VOCAB = 262_144


def median_ms(fn, runs: int = 20) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def draw_table() -> list[str]:
    from fleetlm.engine.sampling import draw

    gen = torch.Generator().manual_seed(0)
    lines = [f"{'rows':>5} {'exponential race ms':>20} {'inverse CDF ms':>15} {'speed-up':>9}"]
    for rows in (1, 8, 64):
        logits = torch.randn(rows, VOCAB, generator=gen) * 4

        def race():
            probs = torch.softmax(logits, -1)
            return [int((p / torch.empty_like(p).exponential_(generator=gen)).argmax()) for p in probs]

        def inverse():
            u = torch.cat([torch.rand(1, generator=gen, dtype=torch.float64) for _ in range(rows)])
            return draw(torch.softmax(logits, -1), u).tolist()

        a, b = median_ms(race), median_ms(inverse)
        lines.append(f"{rows:>5} {a:>20.2f} {b:>15.2f} {a / b:>8.1f}x")
        print(lines[-1], flush=True)
    return lines


def engine_table(requests: int, max_tokens: int) -> list[str]:
    from fleetlm import LLM, SamplingParams
    from fleetlm.models.embedded import ensure_default_model

    llm = LLM(str(ensure_default_model()))
    rng = random.Random(0)
    prompts = [[2] + [rng.randrange(1000, 100_000) for _ in range(rng.randint(63, 127))] for _ in range(requests)]
    # warm-up at the full batch (allocator, oneDNN's kernels for each shape)
    llm.generate(prompt_token_ids=prompts, sampling_params=SamplingParams(max_tokens=8, temperature=1.0))
    lines = [f"{'decoding':<18} {'output tok/s':>13} {'wall s':>7}"]
    for name, temperature in (("greedy", 0.0), ("temperature 1.0", 1.0), ("greedy, again", 0.0)):
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, ignore_eos=True)
        t0 = time.monotonic()
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
        wall = time.monotonic() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        lines.append(f"{name:<18} {tokens / wall:>13.1f} {wall:>7.1f}")
        print(lines[-1], flush=True)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    machine = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(machine, flush=True)
    lines = [machine, f"one draw per row over a {VOCAB:,}-token vocabulary (fp32, softmax included), median of 20"]
    lines += draw_table()
    lines += ["", f"engine: {args.requests} requests, prompts of 64-128 tokens, {args.max_tokens} output tokens each"]
    lines += engine_table(args.requests, args.max_tokens)
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sampler.txt").write_text(f"# python benchmarks/sampler.py --requests {args.requests}\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
