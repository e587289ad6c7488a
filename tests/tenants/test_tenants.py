"""The tenants' parts on their own: the database (migrations, one writer), keys (only a
hash stored), limits (reservations, rpm, tpm), worst-case estimates against a real
tokenizer, the ledger's reports, and a server killed mid-write leaving a whole file. Tests
taking `db` run on SQLite and on PostgreSQL (conftest.py)."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections import Counter

import httpx
import pytest

from fleetlm.openai.chunks import ModelCard, Pricing
from fleetlm.openai.errors import RateLimitError
from fleetlm.openai.protocol import ChatCompletionRequest, CompletionRequest
from fleetlm.tenants import keys as keydb
from fleetlm.tenants import ledger
from fleetlm.tenants.db import MIGRATIONS, Database
from fleetlm.tenants.estimate import Estimate, prompt_bound, worst_case
from fleetlm.tenants.keys import Key, parse_duration, parse_models
from fleetlm.tenants.ledger import LedgerRow
from fleetlm.tenants.limits import Limiter
from tests.api.conftest import fleet_serve, free_port, stop_process, wait_healthy


def test_the_schema_migrates_an_older_file_and_refuses_a_newer_one(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a file from a release that knew only the first migration
        conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
        conn.execute("INSERT INTO keys (id, name, hash, prefix, created) VALUES ('k', 'n', 'h', 'p', 0)")
    d = Database(path)
    assert d.call(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == len(MIGRATIONS)
    assert d.call(lambda c: c.execute("SELECT name FROM keys").fetchone()[0]) == "n"  # kept
    assert d.call(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    d.close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer fleetlm"):
        Database(path)


def test_only_a_hash_of_the_secret_is_stored(db, tmp_path):
    key, secret = db.call(lambda c: keydb.create_key(c, "app1", budget_usd=2.5, rpm=3, models=("tiny*",),
                                                     expires_in_s=3600))
    if db.url:  # every value of every key row, as text
        raw = repr(db.call(lambda c: [tuple(r) for r in c.execute("SELECT * FROM keys")])).encode()
    db.close()
    if db.path:  # the file and its WAL, byte for byte
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("t.db*"))
    assert key.prefix.encode() in raw and secret.encode() not in raw and secret[10:].encode() not in raw
    d = Database(db.url or db.path)
    found = d.call(keydb.key_by_hash, keydb.hash_secret(secret))
    assert found.id == key.id and found.budget_usd == 2.5 and found.allows("tiny:fc") and not found.allows("x")
    assert d.call(keydb.key_by_hash, keydb.hash_secret(secret + "x")) is None
    assert d.call(keydb.revoke_key, key.id).state() == "revoked"
    d.close()


def test_durations_models_and_names_are_checked():
    assert parse_duration("30d") == 30 * 86400 and parse_duration("1h30m") == 5400
    for bad in ("", "30", "3q", "d", "1d x"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    assert parse_models("a*, router/*") == ("a*", "router/*") and parse_models(None) == ("*",)
    with pytest.raises(ValueError):
        parse_models("a\nb")


def test_bad_key_fields_are_refused(db):
    for kw in ({"budget_usd": 0}, {"rpm": -1}, {"expires_in_s": 0}):
        with pytest.raises(ValueError):
            db.call(lambda c: keydb.create_key(c, "x", **kw))
    with pytest.raises(ValueError, match="name"):
        db.call(lambda c: keydb.create_key(c, "x" * 201))


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def key(**kw) -> Key:
    return Key(id="k1", name="app", prefix="fk-", created=0, **kw)


def est(usd: float, tokens: int = 10, composite: bool = False) -> Estimate:
    return Estimate(tokens, 0, Pricing(usd * 1e6 / tokens, 0), composite)


def test_reservations_never_let_concurrent_requests_pass_the_budget():
    lim, k = Limiter(), key(budget_usd=1.0)
    held = [lim.admit(k, est(0.4)), lim.admit(k, est(0.4))]
    with pytest.raises(RateLimitError) as err:
        lim.admit(k, est(0.4))  # 0.8 held: another 0.4 would pass 1.0
    assert err.value.code == "insufficient_quota" and "held by requests in flight" in err.value.message
    lim.settle(held[0], 0.1, 10)  # it cost less than its worst case: the difference is free again
    lim.admit(k, est(0.4))
    assert lim.left_usd(k) == pytest.approx(1.0 - 0.1 - 0.8)
    # a program's reservation is capped at what is left, and nothing is left after it
    lim2, k2 = Limiter(), key(budget_usd=0.5)
    res = lim2.admit(k2, est(10.0, composite=True))
    assert res.usd == pytest.approx(0.5)
    with pytest.raises(RateLimitError):
        lim2.admit(k2, est(0.01, composite=True))


def test_rpm_and_tpm_windows_slide():
    clock = Clock()
    lim, k = Limiter(clock), key(rpm=2, tpm=100)
    a = lim.admit(k, est(0, 10))
    clock.t += 10
    lim.admit(k, est(0, 10))
    with pytest.raises(RateLimitError) as err:
        lim.admit(k, est(0, 10))
    assert err.value.headers["Retry-After"] == "50"  # the first request leaves the window in 50 s
    clock.t += 50
    lim.settle(a, 0.0, 150)  # 150 tokens used: over tpm until they leave the window
    with pytest.raises(RateLimitError, match="tokens per minute"):
        lim.admit(k, est(0, 10))
    clock.t += 60
    lim.admit(k, est(0, 10))
    # a fresh read from the database never lowers what this process has seen spent
    lim.spent["k1"] = 0.7
    lim.observe(key(budget_usd=1.0, spent_usd=0.2))
    assert lim.spent["k1"] == 0.7


def test_the_prompt_bound_is_never_below_the_real_token_count(tiny_gemma):
    """Bytes of the JSON sent bound the tokens of the templated prompt (byte-level tokenizer
    included: the tiny model's is one token per byte, the worst case there is)."""
    from fleetlm.backends.local_inputs import EngineInputs
    from fleetlm.config import EngineConfig
    from fleetlm.engine.engine import LLMEngine

    engine = LLMEngine(EngineConfig(model=str(tiny_gemma), dtype="float32", max_model_len=4096))
    inputs = EngineInputs(engine)
    for messages in ([{"role": "user", "content": "hi"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "é ü 漢字 🙂" * 20}],
                     [{"role": "user", "content": ""}] * 5):
        req = ChatCompletionRequest(model="tiny", messages=messages)
        assert len(inputs.chat(req).ids) <= prompt_bound(req)
    assert prompt_bound(CompletionRequest(model="tiny", prompt=[1, 2, 3])) == 3
    assert prompt_bound(CompletionRequest(model="tiny", prompt=["ab", "cde"])) == 5


def test_the_price_of_a_router_is_the_dearest_it_may_pick():
    class T:
        def __init__(self, card):
            self._card = card

        def card(self):
            return self._card

    targets = {"a": T(ModelCard("a", pricing=Pricing(1, 2))), "b": T(ModelCard("b", pricing=Pricing(3, 1))),
               "r": T(ModelCard("r", candidates=["a", "b"])), "p": T(ModelCard("p"))}

    class Catalog:
        def resolve(self, m):
            return targets[m]

        def cards(self):
            return [t.card() for t in targets.values()]

    req = ChatCompletionRequest(model="r", messages=[{"role": "user", "content": "x"}], max_tokens=10, n=2)
    e = worst_case(req, targets["r"], Catalog(), default_max_tokens=99)
    assert (e.pricing.input_per_mtok, e.pricing.output_per_mtok, e.completion_tokens, e.composite) == (3, 2, 20, False)
    e = worst_case(req, targets["p"], Catalog(), default_max_tokens=99)  # a program: any model, many calls
    assert e.composite and e.pricing.input_per_mtok == 3
    no_max = ChatCompletionRequest(model="a", messages=[{"role": "user", "content": "x"}])
    assert worst_case(no_max, targets["a"], Catalog(), default_max_tokens=99).completion_tokens == 99


def test_reports_count_a_programs_calls_once(db):
    k, _ = db.call(lambda c: keydb.create_key(c, "app"))
    now = time.time()
    rows = [LedgerRow("r1", now, k.id, "chat", "compound/x", "compound/x", 10, 5, None, 0.3, 0.1, 200),
            LedgerRow("r1/0", now, k.id, "chat", "tiny", "tiny", 10, 5, None, 0.3, 0.0, 200, parent_id="r1"),
            LedgerRow("r2", now - 7200, k.id, "chat", "tiny", "tiny", 4, 2, 0, 0.1, 0.1, 429),
            LedgerRow("r3", now, None, "completions", "tiny", "tiny", 1, 1, 0, 0.05, 0.1, 200)]
    db.call(ledger.write, rows)
    by_key = {r["name"]: r for r in db.call(lambda c: ledger.usage(c, by="key"))}
    assert by_key["app"]["requests"] == 2 and by_key["app"]["cost_usd"] == pytest.approx(0.4)
    assert by_key["app"]["errors"] == 1 and by_key["(master)"]["requests"] == 1
    recent = {r["name"]: r for r in db.call(lambda c: ledger.usage(c, by="model", since_s=3600))}
    assert set(recent) == {"compound/x", "tiny"} and recent["tiny"]["requests"] == 1
    assert db.call(keydb.find_key, k.id).spent_usd == pytest.approx(0.4)  # sub-calls are not charged twice


def test_a_server_killed_mid_write_leaves_a_whole_database(tiny_gemma, tmp_path):
    """SIGKILL while 8 clients keep the ledger writing: the file passes SQLite's integrity
    check, every key's spend equals the sum of its ledger rows (no half transaction), and a
    restarted server serves the same key."""
    (tmp_path / "fleet.toml").write_text('[tenants]\ndatabase = "fleet.db"\n')

    def start(port):
        return fleet_serve(tiny_gemma, port, "--max-model-len", "256", "--config", str(tmp_path / "fleet.toml"),
                           "--api-key", "m", "--served-model-name", "tiny", "--price-input-per-mtok", "100",
                           "--price-output-per-mtok", "200")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(port)
    try:
        wait_healthy(url, timeout=120)
        secret = httpx.post(f"{url}/v1/admin/keys", json={"name": "load"},
                            headers={"Authorization": "Bearer m"}).json()["secret"]
        stop, done = threading.Event(), []

        def load():
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=10) as http:
                while not stop.is_set():
                    try:
                        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "a b c", "max_tokens": 2})
                        done.append(r.status_code)
                    except httpx.HTTPError:
                        return

        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        while len(done) < 40:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(15)
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(tmp_path / "fleet.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        spent, = conn.execute("SELECT spent_usd FROM keys WHERE name = 'load'").fetchone()
        rows, total = conn.execute("SELECT COUNT(*), SUM(cost_usd) FROM requests WHERE key_id IS NOT NULL").fetchone()
    assert rows >= 1 and spent == pytest.approx(total), (rows, Counter(done))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(port)
    try:
        wait_healthy(url, timeout=120)
        r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1},
                       headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 200
    finally:
        stop_process(proc)
