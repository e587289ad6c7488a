"""Soak test of `fleet serve`: many clients mixing normal, hostile, cancelled and streamed
requests, over real HTTP on 127.0.0.1.

    python benchmarks/soak.py                          # 10,000 requests, 32 clients
    python benchmarks/soak.py --requests 2000

Starts the server as a subprocess (gemma-3-270m, no embeddings) and sends, from a fixed seed:
normal chat and text completions (short answers), streamed ones read to the end, streams
dropped after their first chunk, and hostile bodies (broken JSON, wrong types, lone
surrogates, huge numbers, unknown models and fields, oversized stop lists and tool lists).
Prints failed normal requests (any non-200 answer or broken body: must be 0), 5xx answers
(must be 0), the p50 / p99 latency of normal requests, and the server's RSS after warm-up,
after each of --rounds rounds and at the end (growth should stay within 10%; a leak keeps
growing round after round, a warming heap levels off). The last line is
`soak: N failed normal requests, M 5xx`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
from gemma_server import stop_group  # benchmarks/ is on sys.path when run as a script

RESULTS = Path(__file__).parent / "results"

HOSTILE = [
    b"{", b"[]", b"null", b'{"model": "gemma-3-270m", "prompt": ', b"\xff\xfe\x00",
    b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "\\ud800 x"}]}',
    b'{"model": "gemma-3-270m", "prompt": "x", "max_tokens": 1000000000000}',
    b'{"model": "gemma-3-270m", "prompt": "x", "temperature": 1e308}',
    b'{"model": "gemma-3-270m", "prompt": "x", "n": -3}',
    b'{"model": "no-such-model", "prompt": "x"}',
    b'{"model": "gemma-3-270m", "prompt": "x", "maxtokens": 3}',
    b'{"model": "gemma-3-270m", "messages": [{"role": "wizard", "content": 1}]}',
    json.dumps({"model": "gemma-3-270m", "prompt": "x", "stop": ["s"] * 100}).encode(),
    json.dumps({"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}] * 2000}
               ).encode(),
    json.dumps({"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "nope"}}}}
               ).encode(),
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan(n: int, seed: int) -> list[str]:
    """The kind of each request, in order: normal, stream, dropped, hostile."""
    rng = random.Random(seed)
    return rng.choices(["normal", "stream", "dropped", "hostile"], weights=[55, 15, 10, 20], k=n)


async def one(client: httpx.AsyncClient, kind: str, i: int, rng: random.Random, out: dict) -> None:
    words = " ".join(rng.choice(["time", "river", "book", "light", "market", "song"])
                     for _ in range(rng.randint(3, 40)))
    chat = rng.random() < 0.5
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {"model": "gemma-3-270m", "max_tokens": 4, "temperature": 0}
    body.update({"messages": [{"role": "user", "content": words}]} if chat else {"prompt": words})
    t0 = time.monotonic()
    try:
        if kind == "hostile":
            resp = await client.post(path, content=rng.choice(HOSTILE), headers={"content-type": "application/json"})
            out["status"][resp.status_code] += 1
            return
        if kind == "normal":
            resp = await client.post(path, json=body)
            out["status"][resp.status_code] += 1
            ok = resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] >= 1
        else:
            async with client.stream("POST", path, json={**body, "stream": True}) as resp:
                out["status"][resp.status_code] += 1
                ok, done = resp.status_code == 200, False
                async for line in resp.aiter_lines():
                    if kind == "dropped" and line.startswith("data: "):
                        done = True
                        break  # the client goes away after the first chunk
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: ") and '"error"' in line:
                        ok = False
                ok = ok and done
        if kind != "dropped":
            out["latency"].append(time.monotonic() - t0)
        if not ok:
            out["failed"].append(f"{kind} {i}: HTTP {resp.status_code}")
    except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
        out["failed"].append(f"{kind} {i}: {type(exc).__name__}: {exc}")


async def drive(url: str, kinds: list[str], clients: int, seed: int) -> dict:
    out = {"status": Counter(), "latency": [], "failed": []}
    queue: asyncio.Queue = asyncio.Queue()
    for i, k in enumerate(kinds):
        queue.put_nowait((i, k))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120.0), limits=limits) as client:

        async def worker(w: int):
            rng = random.Random(seed * 1000 + w)
            while not queue.empty():
                i, k = queue.get_nowait()
                await one(client, k, i, rng, out)

        await asyncio.gather(*(worker(w) for w in range(clients)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=4, help="RSS is read after each round")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    RESULTS.mkdir(exist_ok=True)
    log = open(RESULTS / "soak_server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "fleetlm.cli", "serve", "--port", str(port), "--no-embeddings",
                             "--max-num-seqs", "64", "--max-pending-requests", "256"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        server = psutil.Process(proc.pid)
        asyncio.run(drive(url, ["normal"] * 64 + ["stream"] * 32, args.clients, args.seed + 1))  # warm-up
        rss = [server.memory_info().rss]
        t0 = time.monotonic()
        kinds_all = plan(args.requests, args.seed)
        out = {"status": Counter(), "latency": [], "failed": []}
        size = -(-len(kinds_all) // args.rounds)
        for r in range(args.rounds):  # RSS after each round: a leak keeps growing, a warm heap levels off
            part = asyncio.run(drive(url, kinds_all[r * size:(r + 1) * size], args.clients, args.seed + 100 * r))
            out["status"] += part["status"]
            out["latency"] += part["latency"]
            out["failed"] += part["failed"]
            rss.append(server.memory_info().rss)
        wall = time.monotonic() - t0
        rss0, rss1 = rss[0], rss[-1]
        alive = httpx.post(f"{url}/v1/completions", json={"model": "gemma-3-270m", "prompt": "still", "max_tokens": 2},
                           timeout=60).status_code
    finally:
        stop_group(proc)
        log.close()
    lat = sorted(out["latency"])
    p = lambda q: lat[min(len(lat) - 1, int(q * (len(lat) - 1)))] if lat else float("nan")  # noqa: E731
    kinds = Counter(plan(args.requests, args.seed))
    fivexx = sum(n for s, n in out["status"].items() if s >= 500)
    lines = [f"soak: {args.requests} requests from {args.clients} clients in {wall:.0f} s "
             f"({', '.join(f'{k} {n}' for k, n in kinds.items())})",
             "answers by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(out["status"].items())),
             f"normal requests: p50 {1000 * p(0.5):.0f} ms, p99 {1000 * p(0.99):.0f} ms",
             f"server RSS: {rss0 / 2**20:.0f} MiB after warm-up, {rss1 / 2**20:.0f} MiB at the end "
             f"({100 * (rss1 - rss0) / rss0:+.1f}%); a request afterwards: HTTP {alive}",
             "server RSS after each round (MiB): " + ", ".join(f"{x / 2**20:.0f}" for x in rss)]
    lines += [f"  failed: {f}" for f in out["failed"][:5]]
    lines.append(f"soak: {len(out['failed'])} failed normal requests, {fivexx} 5xx")
    text = "\n".join(lines)
    print(text)
    (RESULTS / "soak.txt").write_text(f"# python benchmarks/soak.py --requests {args.requests} "
                                      f"--clients {args.clients} --rounds {args.rounds}\n{text}\n")
    return 0 if not out["failed"] and not fivexx else 1


if __name__ == "__main__":
    sys.exit(main())
