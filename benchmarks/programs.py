"""Compound programs against the same models answering once, through a real server.

    python benchmarks/programs.py                 # 100 arithmetic problems, all tables
    python benchmarks/programs.py --n 40 --trials 3
    python benchmarks/programs.py --n 0 --bfcl 0    # only the fork and overhead lines

Starts `fleet serve`'s app in-process on 127.0.0.1 (gemma-3-270m, the shipped experts) and
uses the real `openai` client, 8 requests at a time. Tables:

1. Arithmetic word problems (2-3 steps, `fleet tune datagen arith`'s generator with a seed
   of its own; any question the `arith-steps` expert trained or was tested on is dropped):
   the base model answering directly (4-shot text, as `fleet tune eval` scores it), the
   `arith-steps` expert answering directly (step by step), `compound/pot` with the base model
   writing one expression, and `compound/pot` with the expert writing its steps (mode
   "steps": each step recomputed by the safe evaluator). Accuracy with a 95% Wilson
   interval, calls, tokens and wall time per item.
2. BFCL simple_python (the first --bfcl questions, tool_choice auto): the `fc` expert's one
   greedy answer against `sc` (5 samples at temperature 0.7, the majority of normalised tool
   calls) and `bon` (5 samples, the highest mean log-probability) over the same expert.
3. `ctx.fork(n=8)` on a ~1,000-token prompt against 8 separate requests for the same prompt,
   sent at once and one after another, fresh prompts per measurement.
4. The overhead of a program that only forwards one call, against that call made directly
   (p50 of alternated requests, max_tokens=1).

The last line is `pot gain over direct: +NN.N points` (the best pot row against the best
direct answer).
Writes benchmarks/results/programs.txt (programs_partial.txt when a table is skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from gemma_server import serve_gemma

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
PROGRAMS = textwrap.dedent('''
    from fleetlm.compound.programs import program


    @program("fork8")
    async def fork8(ctx, messages, *, n=8):
        drafts = await ctx.fork(ctx.default_model, messages, n=n, temperature=0.8, max_tokens=32, ignore_eos=True)
        return str(len(drafts))


    @program("forward")
    async def forward(ctx, messages):
        return (await ctx.chat(ctx.default_model, messages, max_tokens=1, temperature=0)).text
''')


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a proportion k/n (Wilson score)."""
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def held_out_problems(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """n problems the arith-steps expert never saw (its recipe: datagen seed 0, 1,200 train,
    100 test), and 4 shots for the base model's few-shot prompt from that training half."""
    from fleetlm.tune.datagen import arith

    def questions(path: Path) -> set[str]:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return {r.get("question") or r["messages"][0]["content"].split("Problem: ", 1)[-1] for r in rows}

    with tempfile.TemporaryDirectory() as tmp:
        train, test = arith.generate(Path(tmp) / "seen", n_train=1200, seed=0)
        seen = questions(train) | questions(test)
        _, fresh = arith.generate(Path(tmp) / "fresh", n_train=1, n_test=n * 2, seed=seed)
        rows = [json.loads(line) for line in fresh.read_text().splitlines()]
        rows = [r for r in rows if r["question"] not in seen][:n]
        shots = [json.loads(line) for line in train.read_text().splitlines()[:4]]
    return rows, shots


def start_server():
    from fleetlm.config import ProgramConfig
    from fleetlm.fleet_toml import FleetFile

    folder = Path(tempfile.mkdtemp(prefix="fleetlm-programs-"))
    (folder / "bench.py").write_text(PROGRAMS)
    fc = {"model": "gemma-3-270m:fc", "n": 5, "temperature": 0.7}
    fleet = FleetFile(programs=[ProgramConfig(name="pot-steps", program="pot",
                                              params={"model": "gemma-3-270m:arith-steps", "mode": "steps"}),
                                ProgramConfig(name="sc-fc", program="sc", params=fc),
                                ProgramConfig(name="bon-fc", program="bon", params=fc)])
    base, server, _ = serve_gemma(fleet=fleet, adapters_dir=str(REPO / "experts"), programs_dir=str(folder),
                                  max_pending_requests=256)
    return base, server


def arithmetic_table(client, rows, shots, concurrency: int) -> tuple[list[str], dict]:
    from fleetlm.tune.evaluate import score_arith

    few_shot = "".join(f"Question: {s['messages'][0]['content'].split('Problem: ', 1)[-1]}\nAnswer: "
                       f"{s['messages'][1]['content'].rsplit('The answer is ', 1)[-1].rstrip('.')}\n\n"
                       for s in shots)

    def base_direct(r):
        out = client.completions.create(model="gemma-3-270m", prompt=few_shot + f"Question: {r['question']}\nAnswer:",
                                        max_tokens=8, temperature=0, stop=["\n"])
        return out.choices[0].text, out.usage, 1

    def expert_direct(r):
        out = client.chat.completions.create(model="gemma-3-270m:arith-steps", messages=r["messages"],
                                             max_tokens=96, temperature=0)
        return out.choices[0].message.content, out.usage, 1

    def program(model):
        def ask(r):
            out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": r["question"]}])
            return out.choices[0].message.content, out.usage, len(out.model_extra["fleetlm_trace"]["calls"])
        return ask

    lines = [f"{'system':<38} {'accuracy':>9} {'95% interval':>15} {'calls':>6} {'tokens':>7} {'wall s':>7}",
             f"{'':<38} {'':>9} {'':>15} {'/item':>6} {'/item':>7} {'/item':>7}"]
    acc = {}
    for name, fn in (("gemma-3-270m, 4-shot, direct", base_direct), ("arith-steps expert, direct", expert_direct),
                     ("compound/pot, gemma-3-270m expression", program("compound/pot")),
                     ("compound/pot, arith-steps steps", program("compound/pot-steps"))):
        t0 = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            outs = list(pool.map(fn, rows))
        wall = time.monotonic() - t0
        k = sum(score_arith(text or "", r["expected"]) for (text, _, _), r in zip(outs, rows))
        lo, hi = wilson(k, len(rows))
        tokens = sum(u.total_tokens for _, u, _ in outs) / len(rows)
        calls = sum(c for _, _, c in outs) / len(rows)
        acc[name] = k / len(rows)
        lines.append(f"{name:<38} {k / len(rows):>9.1%} {f'{lo:.1%}-{hi:.1%}':>15} {calls:>6.1f} {tokens:>7.0f} "
                     f"{wall / len(rows):>7.2f}")
        print(lines[-1], flush=True)
    return lines, acc


def bfcl_table(base: str, n: int, concurrency: int) -> list[str]:
    from fleetlm.evals.bfcl import build_request, load_category, parse_response, to_openai_tools
    from fleetlm.evals.bfcl_checker import check

    questions = load_category("simple_python", limit=n)

    def ask(model):
        def one(q):
            tools = to_openai_tools(q.functions)
            r = http.post(f"{base}/chat/completions", json=build_request(q, tools, model=model, max_tokens=256))
            if r.status_code != 200:
                return False, 0
            ok = check(q.category, q.functions, parse_response(r.json(), tools), q.ground_truth or []).valid
            return ok, r.json()["usage"]["total_tokens"]
        return one

    lines = [f"BFCL simple_python, first {len(questions)} questions, tool_choice auto; gain: paired difference "
             f"from the greedy answer on the same questions, 95% interval",
             f"{'system':<38} {'accuracy':>9} {'95% interval':>15} {'first 100':>10} {'gain, points':>19} "
             f"{'tokens':>7} {'x tokens':>9}"]
    direct = None
    with httpx.Client(timeout=600) as http:
        for name, model in (("gemma-3-270m:fc, greedy", "gemma-3-270m:fc"),
                            ("compound/sc-fc (5 samples)", "compound/sc-fc"),
                            ("compound/bon-fc (5 samples, logprob)", "compound/bon-fc")):
            with ThreadPoolExecutor(concurrency) as pool:
                outs = list(pool.map(ask(model), questions))
            oks = [int(ok) for ok, _ in outs]
            k, tokens = sum(oks), sum(t for _, t in outs) / len(outs)
            direct = direct or (oks, tokens)
            lo, hi = wilson(k, len(outs))
            gain, half = paired_gain(oks, direct[0])
            gain_text = f"{gain:+.1f} ({gain - half:+.1f}, {gain + half:+.1f})"
            lines.append(f"{name:<38} {k / len(outs):>9.1%} {f'{lo:.1%}-{hi:.1%}':>15} "
                         f"{sum(oks[:100]) / len(oks[:100]):>10.1%} {gain_text:>19} "
                         f"{tokens:>7.0f} {tokens / direct[1]:>8.1f}x")
            print(lines[-1], flush=True)
    return lines


def paired_gain(oks: list[int], base: list[int]) -> tuple[float, float]:
    """Mean of oks - base in points and the half-width of its 95% interval (normal, paired)."""
    d = [a - b for a, b in zip(oks, base)]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / max(1, len(d) - 1)
    return 100 * mean, 100 * 1.96 * math.sqrt(var / len(d))


def fork_table(client, base: str, trials: int) -> list[str]:
    """ctx.fork(n=8) against the same 8 samples as separate requests, sent at once (they
    share the prompt through the prefix cache, but arrive together, before it is cached) and
    one after another (each reuses the cached prompt); a new prompt for each measurement."""
    words = "time year people way day man thing woman life child world school state family student group".split()
    walls: dict[str, list[float]] = {"fork": [], "at once": [], "one after another": []}
    body = dict(model="gemma-3-270m", max_tokens=32, temperature=0.8, extra_body={"ignore_eos": True})
    for t in range(trials):
        rng = random.Random(t)
        for name in walls:
            prompt = " ".join(rng.choice(words) for _ in range(900))  # ~1,000 tokens, new each time
            messages = [{"role": "user", "content": prompt}]
            t0 = time.monotonic()
            if name == "fork":
                client.chat.completions.create(model="compound/fork8", messages=messages)
            elif name == "at once":
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda _: client.chat.completions.create(messages=messages, **body), range(8)))
            else:
                for _ in range(8):
                    client.chat.completions.create(messages=messages, **body)
            walls[name].append(time.monotonic() - t0)
    f, s, q = (statistics.median(w) for w in walls.values())
    return [f"ctx.fork(n=8), ~1,000-token prompt, 32 tokens each: {f:.2f} s (median of {trials}); "
            f"8 separate requests at once: {s:.2f} s ({s / f:.2f}x fork's wall time); "
            f"one after another: {q:.2f} s ({q / f:.2f}x)"]


def overhead_table(client, rounds: int) -> list[str]:
    messages = [{"role": "user", "content": "Hello"}]
    direct, program = [], []
    for _ in range(rounds):
        t0 = time.monotonic()
        client.chat.completions.create(model="gemma-3-270m", messages=messages, max_tokens=1, temperature=0)
        direct.append(time.monotonic() - t0)
        t0 = time.monotonic()
        client.chat.completions.create(model="compound/forward", messages=messages)
        program.append(time.monotonic() - t0)
    d, p = statistics.median(direct), statistics.median(program)
    return [f"a program forwarding one call (max_tokens=1): p50 {p * 1000:.1f} ms vs {d * 1000:.1f} ms direct; "
            f"overhead {1000 * (p - d):+.1f} ms ({rounds} alternated requests each)"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="arithmetic problems (0: skip)")
    ap.add_argument("--seed", type=int, default=2026, help="seed of the held-out problems")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--bfcl", type=int, default=400, help="BFCL simple_python questions (0: skip)")
    ap.add_argument("--trials", type=int, default=5, help="fork trials")
    ap.add_argument("--overhead-rounds", type=int, default=30)
    args = ap.parse_args()
    from openai import OpenAI

    rows, shots = held_out_problems(args.n, args.seed) if args.n else ([], [])
    base, server = start_server()
    client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600)
    lines, acc = [], {}
    try:
        if rows:
            print(f"arithmetic: {len(rows)} held-out problems (seed {args.seed}), {args.concurrency} at a time",
                  flush=True)
            lines, acc = arithmetic_table(client, rows, shots, args.concurrency)
        if args.bfcl:
            lines += [""] + bfcl_table(base, args.bfcl, args.concurrency)
        lines += [""] + fork_table(client, base, args.trials)
        print(lines[-1], flush=True)
        lines += overhead_table(client, args.overhead_rounds)
        print(lines[-1], flush=True)
        if acc:
            best_direct = max(v for k, v in acc.items() if "direct" in k)
            best_pot = max(v for k, v in acc.items() if "pot" in k)
            lines.append(f"pot gain over direct: {100 * (best_pot - best_direct):+.1f} points")
    finally:
        server.should_exit = True
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    name = "programs.txt" if rows and args.bfcl else "programs_partial.txt"  # a partial run keeps the full one
    (RESULTS / name).write_text(f"# python benchmarks/programs.py {' '.join(sys.argv[1:])}\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
