"""Tenant keys through a real server with the real `openai` client over 127.0.0.1: a key's
allowlist, budget, rate limit and expiry on the local, upstream (a second real server),
router and program paths, streamed and not; concurrent requests against a budget that
covers one; the ledger against the usage the client saw; a stream cut short billed for what
it sent; hostile Authorization headers; the admin API behind the master key."""

from __future__ import annotations

import asyncio
import re
import socket
import sqlite3
import time

import httpx
import openai
import pytest

from fleetlm.config import ProgramConfig, RouterConfig, TenantsConfig, UpstreamConfig
from tests.api.conftest import start_server

MASTER = "master-secret"
ASK = [{"role": "user", "content": "which way to the harbour?"}]
PATHS = ["tiny", "upstream/peer/tiny", "router/r", "compound/vote"]
PRICE_IN, PRICE_OUT = 100.0, 200.0  # $ per million tokens: a tiny model's answers cost something


@pytest.fixture(scope="module")
def fleet(tiny_gemma, tmp_path_factory):
    db = tmp_path_factory.mktemp("tenants") / "fleet.db"
    peer, peer_srv, peer_thread = start_server(tiny_gemma)
    ups = [UpstreamConfig(name="peer", base_url=f"{peer.base_url}/v1", models=["tiny"],
                          price_input_per_mtok=PRICE_IN, price_output_per_mtok=PRICE_OUT)]
    routers = [RouterConfig(name="r", candidates={"local": "tiny", "up": "upstream/peer/tiny"}, order=["local", "up"])]
    programs = [ProgramConfig(name="vote", program="sc", params={"n": 2, "max_tokens": 6})]
    front, srv, thread = start_server(tiny_gemma, upstreams=ups, routers=routers, programs=programs,
                                      tenants=TenantsConfig(database=str(db)), api_key=MASTER,
                                      price_input_per_mtok=PRICE_IN, price_output_per_mtok=PRICE_OUT,
                                      max_pending_requests=128)
    front.db = db
    yield front
    for s, t in ((srv, thread), (peer_srv, peer_thread)):
        s.should_exit = True
        t.join(10)


def new_key(fleet, **limits) -> str:
    r = httpx.post(f"{fleet.base_url}/v1/admin/keys", json={"name": "t", **limits},
                   headers={"Authorization": f"Bearer {MASTER}"})
    assert r.status_code == 200, r.text
    assert r.json()["secret"].startswith("fk-") and r.json()["spent_usd"] == 0
    return r.json()["secret"]


def client(fleet, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.base_url}/v1", api_key=key, max_retries=0)


def ask(fleet, key: str, model: str, *, stream: bool, max_tokens: int = 5):
    """One chat request; (text, usage) or the openai error it raised."""
    c = client(fleet, key)
    if not stream:
        r = c.chat.completions.create(model=model, messages=ASK, max_tokens=max_tokens, temperature=0)
        return r.choices[0].message.content, r.usage, r.id
    text, usage, rid = "", None, None
    for chunk in c.chat.completions.create(model=model, messages=ASK, max_tokens=max_tokens, temperature=0,
                                           stream=True, stream_options={"include_usage": True}):
        rid = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        usage = chunk.usage or usage
    return text, usage, rid


def worst_case_usd(fleet, model: str, max_tokens: int = 5) -> float:
    """The request's reservation, as the server states it when a key cannot cover it."""
    with pytest.raises(openai.RateLimitError) as err:
        ask(fleet, new_key(fleet, budget_usd=1e-12), model, stream=False, max_tokens=max_tokens)
    return float(re.search(r"worst case \$([\d.]+)", err.value.message).group(1))


def ledger_row(fleet, rid: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(fleet.db) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM requests WHERE id = ?", (rid,)).fetchone()
        if row is not None:
            return dict(row)
        time.sleep(0.05)
    raise AssertionError(f"no ledger row {rid}")


def test_only_health_is_open_and_admin_needs_the_master_key(fleet):
    assert httpx.get(f"{fleet.base_url}/health").status_code == 200
    for path in ("/v1/models", "/metrics", "/openapi.json", "/docs", "/v1/admin/keys"):
        r = httpx.get(f"{fleet.base_url}{path}")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
    key = new_key(fleet, models="tiny,router/*")
    listed = {m.id for m in client(fleet, key).models.list()}
    assert listed == {"tiny", "router/r"}  # a key sees the models it may use
    r = httpx.get(f"{fleet.base_url}/v1/admin/keys", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    master = {"Authorization": f"Bearer {MASTER}"}
    keys = httpx.get(f"{fleet.base_url}/v1/admin/keys", headers=master).json()["data"]
    assert keys and all("secret" not in k and "hash" not in k for k in keys)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", PATHS)
def test_allowlist_budget_rate_and_expiry_hold_on_every_path(fleet, model, stream):
    # allowlist: another model's key is a 403; the key's own works
    with pytest.raises(openai.PermissionDeniedError) as err:
        ask(fleet, new_key(fleet, models="nothing-like-it*"), model, stream=stream)
    assert err.value.body["code"] == "model_not_allowed"
    # rate: the third request in a minute is a 429 with Retry-After
    key = new_key(fleet, rpm=2)
    ask(fleet, key, model, stream=stream)
    ask(fleet, key, model, stream=stream)
    with pytest.raises(openai.RateLimitError) as err:
        ask(fleet, key, model, stream=stream)
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 60
    # expiry: a key past its lifetime is a 401
    key = new_key(fleet, expires_in="1s")
    ask(fleet, key, model, stream=stream)
    time.sleep(1.1)
    with pytest.raises(openai.AuthenticationError):
        ask(fleet, key, model, stream=stream)
    # budget: spent, then refused (a program may spend what is left, then is refused)
    budget = 1e-9 if model.startswith("compound/") else worst_case_usd(fleet, model) * (1 + 1e-9)
    key = new_key(fleet, budget_usd=budget)
    try:
        ask(fleet, key, model, stream=stream)
    except openai.APIError as exc:  # a streamed program passes its budget mid-stream: an in-band error
        assert stream and model.startswith("compound/") and "budget ran out" in str(exc)
    with pytest.raises(openai.RateLimitError) as err:
        ask(fleet, key, model, stream=stream)
    assert err.value.body["code"] == "insufficient_quota"


def test_refused_requests_are_in_the_ledger_and_the_metrics(fleet):
    """A 429 (rate) and a 403 (a model outside the key's list) end like any request: a ledger
    row with their status, no tokens and no cost, and a count in /metrics."""
    made = {}
    for name, limits in (("rate", {"rpm": 1}), ("allow", {"models": "nothing-like-it*"})):
        r = httpx.post(f"{fleet.base_url}/v1/admin/keys", json={"name": name, **limits},
                       headers={"Authorization": f"Bearer {MASTER}"})
        made[name] = r.json()["id"], r.json()["secret"]
    ask(fleet, made["rate"][1], "tiny", stream=False)
    with pytest.raises(openai.RateLimitError):
        ask(fleet, made["rate"][1], "tiny", stream=False)
    with pytest.raises(openai.PermissionDeniedError):
        ask(fleet, made["allow"][1], "tiny", stream=True)
    want = {made["rate"][0]: [200, 429], made["allow"][0]: [403]}
    deadline, rows = time.monotonic() + 10, {}
    while time.monotonic() < deadline:
        with sqlite3.connect(fleet.db) as conn:
            conn.row_factory = sqlite3.Row
            rows = {k: [dict(r) for r in conn.execute("SELECT * FROM requests WHERE key_id = ? ORDER BY ts", (k,))]
                    for k in want}
        if all(len(rows[k]) == len(v) for k, v in want.items()):
            break
        time.sleep(0.1)
    assert {k: [r["status"] for r in v] for k, v in rows.items()} == want
    for row in rows[made["rate"][0]][1:] + rows[made["allow"][0]]:
        assert row["model"] == "tiny" and row["completion_tokens"] == 0 and row["cost_usd"] == 0
    metrics = httpx.get(f"{fleet.base_url}/metrics", headers={"Authorization": f"Bearer {MASTER}"}).text
    assert re.search(r'fleetlm_model_requests_total\{model="tiny",served_by="",status="429"\} [1-9]', metrics)
    assert re.search(r'fleetlm_model_requests_total\{model="tiny",served_by="",status="403"\} [1-9]', metrics)


@pytest.mark.parametrize("model", ["tiny", "upstream/peer/tiny", "compound/vote"])
def test_concurrent_requests_against_a_budget_for_one(fleet, model):
    budget = 1e-9 if model.startswith("compound/") else worst_case_usd(fleet, model) * (1 + 1e-9)
    key = new_key(fleet, budget_usd=budget)

    async def one(http):
        r = await http.post("/v1/chat/completions", json={"model": model, "messages": ASK, "max_tokens": 5})
        return r.status_code, r.json()

    async def burst():
        async with httpx.AsyncClient(base_url=fleet.base_url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            return await asyncio.gather(*(one(http) for _ in range(50)))

    results = asyncio.run(burst())
    codes = [code for code, _ in results]
    assert codes.count(200) <= 1 and codes.count(200) + codes.count(429) == 50, codes
    assert all(body["error"]["code"] == "insufficient_quota" for code, body in results if code == 429)


@pytest.mark.parametrize("model", ["tiny", "upstream/peer/tiny", "router/r", "compound/vote"])
def test_ledger_rows_match_the_usage_the_client_saw(fleet, model):
    key = new_key(fleet)
    seen = {}
    for stream in (False, True):
        text, usage, rid = ask(fleet, key, model, stream=stream, max_tokens=6)
        row = ledger_row(fleet, rid)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
        assert row["status"] == 200 and row["model"] == model and row["parent_id"] is None
        assert row["cost_usd"] == pytest.approx((usage.prompt_tokens * PRICE_IN
                                                 + usage.completion_tokens * PRICE_OUT) / 1e6)
        seen[stream] = (text, row["cost_usd"])
        if model.startswith("compound/"):  # the program's calls are rows under it, already in its cost
            with sqlite3.connect(fleet.db) as conn:
                subs = conn.execute("SELECT SUM(cost_usd), COUNT(*) FROM requests WHERE parent_id = ?",
                                    (rid,)).fetchone()
            assert subs[1] >= 1 and subs[0] == pytest.approx(row["cost_usd"])
    if not model.startswith("compound/"):  # greedy: the same output, streamed or not, costs the same
        assert seen[True] == seen[False]
    usage_by_key = httpx.get(f"{fleet.base_url}/v1/admin/usage", params={"by": "model"},
                             headers={"Authorization": f"Bearer {MASTER}"}).json()["data"]
    assert any(r["name"] == model and r["requests"] >= 2 for r in usage_by_key)


def test_a_stream_cut_short_is_billed_for_what_it_sent(fleet):
    key = new_key(fleet)
    stream = client(fleet, key).chat.completions.create(
        model="tiny", messages=ASK, max_tokens=200, temperature=0, stream=True, extra_body={"ignore_eos": True})
    got, rid = 0, None
    for chunk in stream:
        rid = chunk.id
        got += bool(chunk.choices and chunk.choices[0].delta.content)
        if got == 5:
            break
    stream.close()
    row = ledger_row(fleet, rid, timeout=10)
    assert row["status"] == 499
    assert 5 <= row["completion_tokens"] < 200
    assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] * PRICE_IN + row["completion_tokens"] * PRICE_OUT)
                                            / 1e6)
    spent = httpx.get(f"{fleet.base_url}/v1/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}).json()
    assert any(k["spent_usd"] == pytest.approx(row["cost_usd"]) for k in spent["data"])


def raw_request(base_url: str, header: bytes) -> int:
    """Send one request with raw header bytes (beyond what httpx would allow); its status."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_hostile_keys_are_401s_and_the_server_keeps_serving(fleet):
    other = new_key(fleet)
    forged = other[:10] + ("A" if other[10] != "A" else "B") + other[11:]  # another tenant's key, one byte off
    hostile = [b"Authorization: Bearer ' OR 1=1 --", b"Authorization: Bearer fk-'; DROP TABLE keys; --",
               b"Authorization: Bearer " + b"x" * 1_000_000, b"Authorization: Bearer fk-\xc3\xa9\xe2\x80\xae",
               b"Authorization: Bearer " + forged.encode(), b"Authorization: Basic " + MASTER.encode(),
               b"Authorization: " + MASTER.encode()]
    for header in hostile:
        assert raw_request(fleet.base_url, header) == 401, header[:60]
    # a NUL is not HTTP: the protocol layer refuses the request before any key is read
    assert raw_request(fleet.base_url, b"Authorization: Bearer " + other.encode() + b"\x00") == 400
    assert raw_request(fleet.base_url, b"Authorization: Bearer " + other.encode()) == 200
    with sqlite3.connect(fleet.db) as conn:  # still whole, the keys still there
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM keys").fetchone()[0] >= 1


def test_revoking_a_key_stops_it_at_once(fleet):
    key = new_key(fleet)
    ask(fleet, key, "tiny", stream=False)
    kid = httpx.get(f"{fleet.base_url}/v1/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}).json()["data"]
    kid = next(k["id"] for k in kid if key.startswith(k["prefix"]))
    r = httpx.delete(f"{fleet.base_url}/v1/admin/keys/{kid}", headers={"Authorization": f"Bearer {MASTER}"})
    assert r.json()["state"] == "revoked"
    with pytest.raises(openai.AuthenticationError) as err:
        ask(fleet, key, "tiny", stream=False)
    assert "revoked" in err.value.message
