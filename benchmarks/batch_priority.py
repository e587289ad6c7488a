"""Interactive latency while a batch runs: the Batch API yields to interactive requests.

One server (the embedded gemma-3-270m, in this process, on 127.0.0.1) with tenants on. An
interactive client sends streamed chat requests one after another and measures TTFT (time
to the first content token, client side) in three situations:

- `no batch`: nothing else runs;
- `Batch API`: a batch of long requests runs in the background (`batch_concurrency`
  lines at once, one while interactive requests are in flight);
- `same work as HTTP`: the batch's requests sent as ordinary concurrent HTTP requests
  (what a client without a Batch API would do), the same number at once.

    python benchmarks/batch_priority.py [--requests 20] [--batch-lines 60] [--concurrency 2]

Prints a table, then `interactive TTFT p50 with batch / without: N.NN` as its last line.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai
from gemma_server import serve_gemma  # benchmarks/ is on sys.path when run as a script

MASTER = "bench-master"
ASK = [{"role": "user", "content": "Write one sentence about the sea."}]


def batch_line(i: int, max_tokens: int) -> dict:
    return {"model": "gemma-3-270m", "max_tokens": max_tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"Tell a long story about ship number {i}."}]}


def ttfts(client: openai.OpenAI, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        stream = client.chat.completions.create(model="gemma-3-270m", messages=ASK, max_tokens=8, temperature=0,
                                                stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                out.append(time.perf_counter() - t0)
                break
        stream.close()
        time.sleep(0.2)  # think time between a user's requests
    return out


def http_load(base: str, stop: threading.Event, lines: list[dict], concurrency: int, done: list) -> None:
    """The batch's requests as plain HTTP, `concurrency` at once, until `stop`."""
    def worker(k):
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {MASTER}"}, timeout=600) as http:
            i = k
            while not stop.is_set():
                http.post("/chat/completions", json=lines[i % len(lines)])
                done.append(1)
                i += concurrency

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20, help="interactive requests per situation")
    ap.add_argument("--batch-lines", type=int, default=60)
    ap.add_argument("--batch-max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=2, help="batch lines at once")
    args = ap.parse_args()

    from fleetlm.config import TenantsConfig
    from fleetlm.fleet_toml import FleetFile

    folder = Path(tempfile.mkdtemp(prefix="fleetlm-batch-bench-"))
    fleet = FleetFile(tenants=TenantsConfig(database=str(folder / "fleet.db"), batch_concurrency=args.concurrency))
    base, server, _llm = serve_gemma(fleet=fleet, api_key=MASTER)
    client = openai.OpenAI(base_url=base, api_key=MASTER, max_retries=0)
    lines = [batch_line(i, args.batch_max_tokens) for i in range(args.batch_lines)]
    ttfts(client, 3)  # warm-up: kernels, prefix cache of the interactive prompt
    rows = []

    quiet = ttfts(client, args.requests)
    rows.append(("no batch", quiet, None))

    body = "\n".join(json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions", "body": b})
                     for i, b in enumerate(lines))
    f = client.files.create(file=("bench.jsonl", io.BytesIO(body.encode())), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    time.sleep(1.0)  # the batch is running
    t0, before = time.perf_counter(), client.batches.retrieve(batch.id).request_counts.completed
    with_batch = ttfts(client, args.requests)
    b = client.batches.retrieve(batch.id)
    rate = (b.request_counts.completed - before) / (time.perf_counter() - t0)
    rows.append((f"Batch API ({args.concurrency} lines at once, yields)", with_batch, rate))
    if b.status in ("in_progress", "validating"):
        client.batches.cancel(batch.id)
    while client.batches.retrieve(batch.id).status not in ("completed", "cancelled"):
        time.sleep(0.2)

    stop, done = threading.Event(), []
    loader = threading.Thread(target=http_load, args=(base, stop, lines, args.concurrency, done), daemon=True)
    loader.start()
    time.sleep(1.0)
    t0, before = time.perf_counter(), len(done)
    as_http = ttfts(client, args.requests)
    rate = (len(done) - before) / (time.perf_counter() - t0)
    stop.set()
    loader.join(600)
    rows.append((f"same work as HTTP ({args.concurrency} at once)", as_http, rate))
    server.should_exit = True

    print(f"\ninteractive: {args.requests} streamed chat requests, 8 tokens, one at a time; background: "
          f"{args.batch_max_tokens}-token requests")
    print(f"{'situation':42} {'TTFT p50 ms':>12} {'TTFT p95 ms':>12} {'background req/s':>17}")
    for name, xs, rate in rows:
        p95 = sorted(xs)[max(0, round(0.95 * len(xs)) - 1)]
        print(f"{name:42} {1000 * statistics.median(xs):12.1f} {1000 * p95:12.1f} "
              f"{'-' if rate is None else f'{rate:.2f}':>17}")
    ratio_http = statistics.median(as_http) / statistics.median(quiet)
    print(f"interactive TTFT p50 with the same work as HTTP / without: {ratio_http:.2f}")
    print(f"interactive TTFT p50 with batch / without: {statistics.median(with_batch) / statistics.median(quiet):.2f}")


if __name__ == "__main__":
    main()
