"""Engine speed by which thread loads the model: the server's `AsyncLLM` steps the engine on
its own thread; torch's OpenMP runtime runs parallel regions slower on any thread other than
the first one in the process to use it.

Two layouts, each in a fresh process, alternating for `--rounds`:

* ``loaded-on-main``: the model is loaded on the main thread, then stepped on the engine
  thread (what `AsyncLLM` did before it built the engine itself);
* ``built-on-engine-thread``: `AsyncLLM(config)` loads it on the engine thread (now);
* ``engine-thread+embedder``: the same, then the main thread loads the MiniLM embedder and
  embeds one text, as `fleet serve` does by default (embeddings on) before serving.

Each process serves 8 concurrent greedy requests (64-token random prompts, 64 new tokens,
EOS ignored) twice through `AsyncLLM` on gemma-3-270m and reports the second pass: output
tokens/s and the median time between tokens of one stream. Writes
``benchmarks/results/engine_thread.txt``.

    .venv/bin/python benchmarks/engine_thread.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LAYOUTS = ("loaded-on-main", "built-on-engine-thread", "engine-thread+embedder")


def child(layout: str) -> dict:
    import asyncio

    import numpy as np
    import torch

    from fleetlm.config import EngineConfig
    from fleetlm.engine.async_engine import AsyncLLM
    from fleetlm.engine.engine import LLMEngine
    from fleetlm.engine.sampling_params import SamplingParams

    config = EngineConfig(model="gemma-3-270m", max_num_seqs=8, enable_prefix_caching=False)
    llm = AsyncLLM(engine=LLMEngine(config)) if layout == "loaded-on-main" else AsyncLLM(config)
    if layout == "engine-thread+embedder":
        from fleetlm.models.embeddings import Embedder

        Embedder().embed(["warm-up"])
    rng = np.random.default_rng(0)
    params = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)

    async def one(prompt):
        stamps = []
        async for _ in llm.generate(prompt, params):
            stamps.append(time.perf_counter())
        return stamps

    async def batch():
        t = time.perf_counter()
        runs = await asyncio.gather(*[one(rng.integers(10, 20000, 64).tolist()) for _ in range(8)])
        wall = time.perf_counter() - t
        gaps = np.concatenate([np.diff(s) for s in runs]) * 1e3
        return sum(len(s) for s in runs) / wall, float(np.median(gaps))

    asyncio.run(batch())  # warm-up pass
    tok_s, tpot_ms = asyncio.run(batch())
    llm.shutdown()
    return {"layout": layout, "tok_s": tok_s, "tpot_ms": tpot_ms, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child)), flush=True)
        return 0
    rows = {layout: [] for layout in LAYOUTS}
    for r in range(args.rounds):
        for layout in LAYOUTS:
            proc = subprocess.run([sys.executable, __file__, "--child", layout], capture_output=True,
                                  text=True, check=True)
            rows[layout].append(json.loads(next(l for l in proc.stdout.splitlines()
                                                 if l.startswith("RESULT "))[7:]))
            print(f"round {r + 1}: {rows[layout][-1]}", flush=True)
    out = [f"# benchmarks/engine_thread.py  ({time.strftime('%Y-%m-%d %H:%M')}), gemma-3-270m, 8 streams x "
           f"64 tokens, {args.rounds} rounds, each layout in a fresh process", "",
           f"{'layout':<24}  {'output tok/s (per round)':<26}  {'median TPOT ms (per round)':<26}"]
    for layout, rs in rows.items():
        speeds = ", ".join(f"{r['tok_s']:.1f}" for r in rs)
        tpots = ", ".join(f"{r['tpot_ms']:.0f}" for r in rs)
        out.append(f"{layout:<24}  {speeds:<26}  {tpots:<26}")
    print("\n".join(out))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine_thread.txt").write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
