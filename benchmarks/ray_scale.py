"""The serve-load workload against `fleet serve` in one process and the same model on Ray Serve.

    python benchmarks/ray_scale.py                        # 64 requests, 16 clients, 64 tokens
    python benchmarks/ray_scale.py --requests 32 --clients 8 --max-tokens 32 --skip-two

Runs, one after the other, on the same machine: (a) `fleet serve`; (b) `fleet serve --ray`
with one engine replica (a local cluster on 127.0.0.1), alternating with (a) for `--rounds`
rounds; then (c) Ray with two engine replicas of one torch thread each. Each gets a
warm-up, then the load of `benchmarks/serve_load.py` (streaming /v1/completions, prompts of
32-512 words, greedy): requests/s, output tok/s, TTFT and TPOT p50/p99, failed requests.
Ray's overhead per request is measured apart, on an idle server: the median wall time of
sequential one-token completions on (b) minus on (a). The last line is
`ray/single-process throughput ratio: 0.NN` ((b) over (a), output tok/s over all rounds).
Logs go to benchmarks/results/serve_load_<name>.log, the table to ray_scale.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from gemma_server import stop_group
from serve_load import HEADER, RESULTS, drive, free_port, prompts, row, wait_ready  # benchmarks/ is on sys.path


def fleet_toml(model: str, clients: int, *, replicas: int, threads: int | None) -> str:
    """One [[model]] (`model` as its own id) and its engine deployment's replicas."""
    threads_line = f"num_threads = {threads}\n" if threads else ""
    cpus = threads or 2
    return (f'[[model]]\nid = "{model}"\nmodel = "{model}"\nmax_num_seqs = {clients}\n{threads_line}'
            f'[ray]\n[[ray.deployment]]\nname = "{model}"\nnum_replicas = {replicas}\nnum_cpus = {cpus}\n'
            f'max_ongoing_requests = {clients}\n')


def one_token_ms(url: str, model: str, n: int = 30) -> float:
    """Median wall time (ms) of a sequential one-token completion: the per-request path."""
    times = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(n + 3):
            t0 = time.perf_counter()
            r = client.post("/v1/completions", json={"model": model, "prompt": f"hello {i}", "max_tokens": 1})
            r.raise_for_status()
            if i >= 3:  # the first few warm the path up
                times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def run(cmd: list[str], url: str, name: str, texts: list[str], args) -> tuple:
    import subprocess

    log = open(RESULTS / f"serve_load_{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(url, proc)
        time.sleep(args.settle_s)  # the background grammar-table build of a fresh engine ends first
        asyncio.run(drive(url, args.model, texts[: args.clients], args.clients, 4, name))  # warm-up
        per_request = one_token_ms(url, args.model)
        return asyncio.run(drive(url, args.model, texts, args.clients, args.max_tokens, name)), per_request
    finally:
        stop_group(proc, timeout=60)
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--skip-two", action="store_true", help="skip (c), two replicas of one thread each")
    ap.add_argument("--rounds", type=int, default=2, help="(a) and (b) run this many times, alternating, so "
                    "drift in what else the machine runs hits both alike")
    ap.add_argument("--settle-s", type=float, default=15.0, help="idle wait after each server is ready")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    texts = prompts(args.requests)
    print(f"load: {args.requests} streaming /v1/completions requests, {args.clients} concurrent clients, "
          f"prompts of 32-512 words (seed 0), max_tokens {args.max_tokens}, greedy, {args.model}", flush=True)
    serve = [sys.executable, "-m", "fleetlm.cli", "serve", "--no-embeddings"]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        configs = [(f"{name}-{k + 1}", ray) for k in range(args.rounds)
                   for name, ray in (("fleet-serve", None), ("ray-1-replica", (1, None)))]
        if not args.skip_two:
            configs.append(("ray-2-replicas-1-thread", (2, 1)))
        for name, ray in configs:
            port = free_port()
            cmd = serve + ["--port", str(port)]
            if ray is None:
                cmd += ["--model", args.model, "--max-num-seqs", str(args.clients)]
            else:
                path = Path(tmp) / f"{name}.toml"
                path.write_text(fleet_toml(args.model, args.clients, replicas=ray[0], threads=ray[1]))
                cmd += ["--ray", "--config", str(path)]
            result, per_request = run(cmd, f"http://127.0.0.1:{port}", name, texts, args)
            runs.append((result, per_request))
            print(row(result), flush=True)
    lines = [HEADER] + [row(r) for r, _ in runs]
    for r, _ in runs:
        lines += [f"  {r.name} error: {e}" for e in r.errors[:3]]
    a = [runs[2 * k] for k in range(args.rounds)]  # (result, one-token ms) of each round
    b = [runs[2 * k + 1] for k in range(args.rounds)]
    a_ms, b_ms = statistics.median(ms for _, ms in a), statistics.median(ms for _, ms in b)
    lines.append(f"one-token request, idle server, median over rounds: fleet serve {a_ms:.1f} ms, ray {b_ms:.1f} ms; "
                 f"Ray's overhead per request: {b_ms - a_ms:+.1f} ms")
    ttft = [statistics.median(t for r, _ in side for t in r.ttft) for side in (a, b)]
    lines.append(f"TTFT p50 under load (all rounds), ray - fleet serve: {1000 * (ttft[1] - ttft[0]):+.0f} ms")

    def tok_s(side):  # output tokens per second over every round of one side
        return sum(r.out_tokens for r, _ in side) / sum(r.wall_s for r, _ in side)

    ratio = tok_s(b) / tok_s(a)
    lines.append(f"ray/single-process throughput ratio: {ratio:.2f}")
    text = "\n".join(lines)
    print(text)
    (RESULTS / "ray_scale.txt").write_text(text + "\n")
    return 0 if not any(r.failed for r, _ in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
