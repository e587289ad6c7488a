"""The Batch API with the real `openai` client over 127.0.0.1: files and batches in OpenAI's
shapes, bad lines reported by line number, the batch discount in the ledger, cancel,
tenants kept apart, and a server killed mid-batch resuming without repeating a line."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import time

import httpx
import openai
import pytest

from fleetlm.config import TenantsConfig
from tests.api.conftest import fleet_serve, free_port, start_server, stop_process, wait_healthy

MASTER = "master-secret"
PRICE_IN, PRICE_OUT = 100.0, 200.0


@pytest.fixture(scope="module")
def fleet(tiny_gemma, tmp_path_factory):
    db = tmp_path_factory.mktemp("batches") / "fleet.db"
    front, srv, thread = start_server(tiny_gemma, tenants=TenantsConfig(database=str(db), batch_discount=0.5),
                                      api_key=MASTER, price_input_per_mtok=PRICE_IN, price_output_per_mtok=PRICE_OUT)
    front.db = db
    yield front
    srv.should_exit = True
    thread.join(10)


def key(fleet, **limits) -> openai.OpenAI:
    r = httpx.post(f"{fleet.base_url}/v1/admin/keys", json={"name": "batcher", **limits},
                   headers={"Authorization": f"Bearer {MASTER}"})
    return openai.OpenAI(base_url=f"{fleet.base_url}/v1", api_key=r.json()["secret"], max_retries=0)


def line(i: int, **body) -> str:
    return json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "tiny", "messages": [{"role": "user", "content": f"count to {i}"}],
                                "max_tokens": 3, **body}})


def wait_done(client: openai.OpenAI, batch_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = client.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "cancelled"):
            return b
        time.sleep(0.1)
    raise AssertionError(f"{batch_id} still {b.status} after {timeout} s")


def jsonl(client: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_a_batch_with_bad_lines_completes_with_results_and_errors_naming_them(fleet):
    client = key(fleet)
    lines = [line(i) for i in range(200)]
    lines[17] = '{"custom_id": "req-17", "method": "POST", "url": "/v1/chat/completions", "body": {'  # not JSON
    lines[80] = line(80).replace("/v1/chat/completions", "/v1/embeddings")  # another endpoint
    lines[150] = line(150, max_tokens=-4)  # a body the endpoint refuses
    f = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.bytes > 0
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"job": "nightly"})
    assert b.status == "in_progress" and b.request_counts.total == 200
    b = wait_done(client, b.id)
    assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (197, 3)
    out = jsonl(client, b.output_file_id)
    assert len(out) == 197 and len({r["custom_id"] for r in out}) == 197
    assert all(r["response"]["status_code"] == 200 and r["response"]["body"]["object"] == "chat.completion"
               for r in out)
    errors = {r["line"]: r for r in jsonl(client, b.error_file_id)}
    assert set(errors) == {18, 81, 151}  # 1-based lines
    assert "line 18: not valid JSON" in errors[18]["error"]["message"]
    assert "line 81: url" in errors[81]["error"]["message"] and errors[81]["custom_id"] == "req-80"
    assert "line 151: body.max_tokens" in errors[151]["error"]["message"]
    # the ledger bills each answered line at half price
    with sqlite3.connect(fleet.db) as conn:
        rows = conn.execute("SELECT prompt_tokens, completion_tokens, cost_usd FROM requests WHERE batch_id = ?",
                            (b.id,)).fetchall()
    assert len(rows) == 197
    for p, c, cost in rows:
        assert cost == pytest.approx(0.5 * (p * PRICE_IN + c * PRICE_OUT) / 1e6)


def test_files_and_batches_are_private_to_their_key(fleet):
    alice, bob = key(fleet), key(fleet)
    f = alice.files.create(file=("a.jsonl", io.BytesIO(line(1).encode())), purpose="batch")
    b = alice.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    for call in (lambda: bob.files.retrieve(f.id), lambda: bob.files.content(f.id),
                 lambda: bob.batches.retrieve(b.id), lambda: bob.batches.cancel(b.id),
                 lambda: bob.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert f.id not in {x.id for x in bob.files.list()} and f.id in {x.id for x in alice.files.list()}
    wait_done(alice, b.id)


def test_bad_batches_and_uploads_are_refused_whole(fleet, tmp_path):
    client = key(fleet)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    f = client.files.create(file=("x.jsonl", io.BytesIO(line(1).encode())), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    empty = client.files.create(file=("e.jsonl", io.BytesIO(b"\n\n")), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="no requests"):
        client.batches.create(input_file_id=empty.id, endpoint="/v1/chat/completions", completion_window="24h")
    latin = client.files.create(file=("l.jsonl", io.BytesIO("é".encode("latin-1"))), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="not UTF-8"):
        client.batches.create(input_file_id=latin.id, endpoint="/v1/chat/completions", completion_window="24h")


def test_an_upload_over_the_limit_is_a_413_and_leaves_nothing(tiny_gemma, tmp_path):
    tenants = TenantsConfig(database=str(tmp_path / "f.db"), max_file_bytes=10_000)
    front, srv, thread = start_server(tiny_gemma, tenants=tenants, api_key=MASTER)
    try:
        client = openai.OpenAI(base_url=f"{front.base_url}/v1", api_key=MASTER, max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            client.files.create(file=("big.jsonl", io.BytesIO(b"x" * 2_000_000)), purpose="batch")
        assert err.value.status_code == 413
        assert not [p for p in (tmp_path / "f.db.files").iterdir()]  # no file, whole or partial
        assert client.files.list().data == []
    finally:
        srv.should_exit = True
        thread.join(10)


def test_a_cancelled_batch_keeps_what_it_finished(fleet):
    client = key(fleet)
    body = "\n".join(line(i, max_tokens=40, ignore_eos=True) for i in range(100))
    f = client.files.create(file=("c.jsonl", io.BytesIO(body.encode())), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while client.batches.retrieve(b.id).request_counts.completed < 2:
        time.sleep(0.05)
    assert client.batches.cancel(b.id).status == "cancelling"
    b = wait_done(client, b.id)
    assert b.status == "cancelled" and 2 <= b.request_counts.completed < 100
    assert len(jsonl(client, b.output_file_id)) == b.request_counts.completed


def test_a_server_killed_mid_batch_resumes_it_without_repeating_a_line(tiny_gemma, tmp_path):
    (tmp_path / "fleet.toml").write_text('[tenants]\ndatabase = "fleet.db"\nbatch_concurrency = 4\n')

    def start(port):
        return fleet_serve(tiny_gemma, port, "--max-model-len", "256", "--config", str(tmp_path / "fleet.toml"),
                           "--api-key", MASTER, "--served-model-name", "tiny")

    def client(port):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=MASTER, max_retries=0)

    port = free_port()
    proc = start(port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=120)
        body = "\n".join(line(i, max_tokens=24, ignore_eos=True) for i in range(120))
        f = client(port).files.create(file=("k.jsonl", io.BytesIO(body.encode())), purpose="batch")
        b = client(port).batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        while client(port).batches.retrieve(b.id).request_counts.completed < 20:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(tmp_path / "fleet.db") as conn:
        done_at_kill = conn.execute("SELECT COUNT(*) FROM batch_lines WHERE batch_id = ?", (b.id,)).fetchone()[0]
    assert 20 <= done_at_kill < 120
    port = free_port()
    proc = start(port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=120)
        done = wait_done(client(port), b.id, timeout=300)
        assert done.status == "completed" and done.request_counts.completed == 120
        ids = [r["custom_id"] for r in jsonl(client(port), done.output_file_id)]
        assert sorted(ids) == sorted(f"req-{i}" for i in range(120))  # each exactly once
    finally:
        stop_process(proc)
