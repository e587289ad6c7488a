"""How much sampling can add to a tool-calling expert: its greedy answer against k samples
per question on BFCL simple_python, through a real server.

    python benchmarks/bfcl_samples.py                  # 400 questions, 16 samples at 0.7
    python benchmarks/bfcl_samples.py --n 100 --k 8 --temperature 1.0

For each question: the greedy answer of `gemma-3-270m:fc`, then one request with `n=k`
samples (with log-probabilities). Prints the greedy accuracy, a sample's mean accuracy, the
share of questions where any of the first j samples is right (the most a verifier choosing
among them could reach), and two choices among them: the majority of normalised calls
(`sc`) and the highest summed log-probability. Writes benchmarks/results/bfcl_samples.txt.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from gemma_server import serve_gemma

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
MODEL = "gemma-3-270m:fc"


def collect(base: str, questions, k: int, temperature: float, concurrency: int) -> list[dict]:
    """Per question: {"greedy": ok, "samples": [(ok, call key, summed logprob), ...]}."""
    from fleetlm.evals.bfcl import build_request, parse_response, to_openai_tools
    from fleetlm.evals.bfcl_checker import check

    def one(q):
        tools = to_openai_tools(q.functions)
        graded = []
        for body in (build_request(q, tools, model=MODEL, max_tokens=256),
                     {**build_request(q, tools, model=MODEL, max_tokens=256, temperature=temperature),
                      "n": k, "logprobs": True}):
            r = http.post(f"{base}/chat/completions", json=body)
            r.raise_for_status()
            out = []
            for choice in r.json()["choices"]:
                calls = parse_response({"choices": [choice]}, tools)
                ok = check(q.category, q.functions, calls, q.ground_truth or []).valid
                lp = sum(e["logprob"] for e in ((choice.get("logprobs") or {}).get("content") or []))
                out.append((ok, json.dumps(sorted(json.dumps(c, sort_keys=True) for c in calls)), lp))
            graded.append(out)
        return {"greedy": graded[0][0][0], "samples": graded[1]}

    with httpx.Client(timeout=900) as http, ThreadPoolExecutor(concurrency) as pool:
        rows = []
        for i, row in enumerate(pool.map(one, questions), 1):
            rows.append(row)
            if i % 50 == 0:
                print(f"  {i}/{len(questions)} questions", flush=True)
    return rows


def table(rows: list[dict], k: int) -> list[str]:
    n = len(rows)
    pct = lambda x: f"{100 * x / n:.1f}%"  # noqa: E731
    lines = [f"greedy: {pct(sum(r['greedy'] for r in rows))}; one sample, mean: "
             f"{pct(sum(sum(s[0] for s in r['samples']) / k for r in rows))}",
             f"{'first j samples':<16} {'any right':>10} {'majority':>9} {'max logprob':>12}"]
    for j in sorted({min(5, k), min(8, k), k}):
        anyone = sum(any(s[0] for s in r["samples"][:j]) for r in rows)
        majority = best = 0
        for r in rows:
            samples = r["samples"][:j]
            counts = Counter(s[1] for s in samples)
            majority += next(s[0] for s in samples if counts[s[1]] == max(counts.values()))
            best += max(samples, key=lambda s: s[2])[0]
        lines.append(f"{j:<16} {pct(anyone):>10} {pct(majority):>9} {pct(best):>12}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="BFCL simple_python questions")
    ap.add_argument("--k", type=int, default=16, help="samples per question (1-16)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    from fleetlm.evals.bfcl import load_category

    questions = load_category("simple_python", limit=args.n)
    base, server, _ = serve_gemma(adapters_dir=str(REPO / "experts"), max_pending_requests=256)
    try:
        rows = collect(base, questions, args.k, args.temperature, args.concurrency)
    finally:
        server.should_exit = True
    lines = [f"BFCL simple_python, first {len(rows)} questions, {MODEL}, tool_choice auto; "
             f"{args.k} samples at temperature {args.temperature}", *table(rows, args.k)]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bfcl_samples.txt").write_text(f"# python benchmarks/bfcl_samples.py {' '.join(sys.argv[1:])}\n"
                                              + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
