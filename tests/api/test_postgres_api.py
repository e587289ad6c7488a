"""Tenants on PostgreSQL through a real server and the real `openai` client: `[tenants]
database` is a postgresql:// URL of a real server (tests/pg_server.py); a key's budget holds,
the ledger rows in Postgres match the usage the client saw, and a small batch completes
with its lines billed at the batch discount."""

from __future__ import annotations

import io
import json
import time

import httpx
import openai
import pytest

from fleetlm.config import TenantsConfig
from fleetlm.tenants.pg import PgConnection
from tests.api.conftest import start_server
from tests.api.test_batches_api import jsonl, line, wait_done
from tests.api.test_tenants_api import MASTER, PRICE_IN, PRICE_OUT, ask, client, new_key, worst_case_usd


@pytest.fixture(scope="module")
def fleet(tiny_gemma, postgres, tmp_path_factory):
    url = postgres.new_database()
    tenants = TenantsConfig(database=url, files_dir=str(tmp_path_factory.mktemp("pg-files")), batch_discount=0.5)
    front, srv, thread = start_server(tiny_gemma, tenants=tenants, api_key=MASTER, price_input_per_mtok=PRICE_IN,
                                      price_output_per_mtok=PRICE_OUT)
    front.pg = PgConnection(url)  # the test's own connection, to read what the server wrote
    yield front
    srv.should_exit = True
    thread.join(10)
    front.pg.close()


def ledger_row(fleet, rid: str) -> dict:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the ledger is written after the response
        row = fleet.pg.execute("SELECT * FROM requests WHERE id = ?", (rid,)).fetchone()
        if row is not None:
            return dict(row)
        time.sleep(0.05)
    raise AssertionError(f"no ledger row {rid}")


def test_a_budget_holds_and_the_ledger_matches_the_usage_the_client_saw(fleet):
    key = new_key(fleet)
    for stream in (False, True):
        _, usage, rid = ask(fleet, key, "tiny", stream=stream, max_tokens=6)
        row = ledger_row(fleet, rid)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
        assert row["status"] == 200 and row["model"] == "tiny" and row["parent_id"] is None
        assert row["cost_usd"] == pytest.approx((usage.prompt_tokens * PRICE_IN + usage.completion_tokens * PRICE_OUT)
                                                / 1e6)
    usage = httpx.get(f"{fleet.base_url}/v1/admin/usage", params={"by": "key"},
                      headers={"Authorization": f"Bearer {MASTER}"}).json()["data"]  # sums read from Postgres
    assert any(r["requests"] == 2 and isinstance(r["prompt_tokens"], int) for r in usage)
    # the budget: one request's worst case is covered, the second is refused
    key = new_key(fleet, budget_usd=worst_case_usd(fleet, "tiny") * (1 + 1e-9))
    ask(fleet, key, "tiny", stream=False)
    with pytest.raises(openai.RateLimitError) as err:
        ask(fleet, key, "tiny", stream=False)
    assert err.value.body["code"] == "insufficient_quota"
    spent = {k["prefix"]: k["spent_usd"] for k in httpx.get(
        f"{fleet.base_url}/v1/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}).json()["data"]}
    assert spent[key[:10]] > 0 and spent[key[:10]] == pytest.approx(fleet.pg.execute(
        "SELECT SUM(cost_usd) FROM requests JOIN keys ON keys.id = requests.key_id WHERE keys.prefix = ?",
        (key[:10],)).fetchone()[0])


def test_a_small_batch_completes_and_is_billed_at_the_discount(fleet):
    c = client(fleet, new_key(fleet))
    f = c.files.create(file=("in.jsonl", io.BytesIO("\n".join(line(i) for i in range(5)).encode())), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                         metadata={"job": "pg"})
    b = wait_done(c, b.id)
    assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (5, 0)
    assert b.metadata == {"job": "pg"}
    out = jsonl(c, b.output_file_id)
    assert sorted(r["custom_id"] for r in out) == [f"req-{i}" for i in range(5)]
    rows = fleet.pg.execute("SELECT prompt_tokens, completion_tokens, cost_usd FROM requests WHERE batch_id = ?",
                            (b.id,)).fetchall()
    assert len(rows) == 5
    for p, comp, cost in rows:
        assert cost == pytest.approx(0.5 * (p * PRICE_IN + comp * PRICE_OUT) / 1e6)
    lines = fleet.pg.execute("SELECT COUNT(*) FROM batch_lines WHERE batch_id = ? AND ok = 1", (b.id,)).fetchone()[0]
    assert lines == 5 and json.loads(fleet.pg.execute("SELECT metadata FROM batches WHERE id = ?",
                                                      (b.id,)).fetchone()[0]) == {"job": "pg"}
