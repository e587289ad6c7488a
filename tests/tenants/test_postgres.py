"""The tenants' database on PostgreSQL: the SQL translation, the config for a URL, the
schema migrating an older database and refusing a newer one, rows and counts read as on
SQLite (batch upserts, lines written once), a dropped connection replaced, and errors that
name the extra or the server without its password. The server is real (tests/pg_server.py)."""

from __future__ import annotations

import sys

import pytest

from fleetlm.config import TenantsConfig
from fleetlm.fleet_toml import load_fleet_toml
from fleetlm.tenants import batches
from fleetlm.tenants import keys as keydb
from fleetlm.tenants.db import MIGRATIONS, Database
from fleetlm.tenants.pg import PgConnection, redact, translate


def test_sqlite_sql_is_translated_and_quoted_text_left_alone():
    assert translate("SELECT * FROM t WHERE a = ? AND b IN (?, ?)") == "SELECT * FROM t WHERE a = %s AND b IN (%s, %s)"
    assert translate("SELECT '?', 'it''s ?', \"?\" FROM t WHERE a = ?") == \
        "SELECT '?', 'it''s ?', \"?\" FROM t WHERE a = %s"
    assert translate("SELECT 5 % 3 WHERE a = ?") == "SELECT 5 %% 3 WHERE a = %s"  # psycopg's escape, with arguments
    assert translate("SELECT 5 % 3", with_args=False) == "SELECT 5 % 3"
    assert translate("BEGIN IMMEDIATE") == "BEGIN"
    assert redact("postgresql://u:p@ss@h:5/d") == "postgresql://u:***@h:5/d"


def test_a_url_keeps_its_form_and_its_files_go_to_a_folder(tmp_path):
    url = "postgresql://app:pw@db.internal:5432/fleet"
    assert TenantsConfig(database=url).files_dir == "fleetlm-files"
    assert TenantsConfig(database="x.db").files_dir == "x.db.files"
    (tmp_path / "fleet.toml").write_text(f'[tenants]\ndatabase = "{url}"\n')
    t = load_fleet_toml(str(tmp_path / "fleet.toml")).tenants
    assert t.database == url and t.files_dir == str(tmp_path / "fleetlm-files")


def test_without_psycopg_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    with pytest.raises(RuntimeError, match=r"fleetlm\[postgres\]") as err:
        Database("postgresql://u:secret-pw@127.0.0.1:1/x")
    assert "secret-pw" not in str(err.value)


def test_a_server_that_refuses_the_login_is_named_without_the_password(postgres):
    url = postgres.url("postgres").replace(":s3cret-pw@", ":wrong-pw@")
    with pytest.raises(RuntimeError, match="cannot connect to postgresql://fleet:\\*\\*\\*@127.0.0.1") as err:
        Database(url)
    assert "wrong-pw" not in str(err.value) and "password authentication failed" in str(err.value)


def test_the_schema_migrates_an_older_database_and_refuses_a_newer_one(postgres):
    url = postgres.new_database()
    old = PgConnection(url)  # a database from a release that knew only the first migration
    old.executescript(MIGRATIONS[0])
    old.executescript("CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);")
    old.execute("INSERT INTO keys (id, name, hash, prefix, created) VALUES ('k', 'n', 'h', 'p', 0)")
    d = Database(url)
    assert d.call(lambda c: c.execute("SELECT version FROM schema_version").fetchall()[0][0]) == len(MIGRATIONS)
    assert d.call(lambda c: c.execute("SELECT name FROM keys").fetchone()["name"]) == "n"  # kept
    assert d.call(lambda c: c.execute("SELECT COUNT(*) FROM batches").fetchone()[0]) == 0  # the second migration
    types = dict(old.execute("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'keys'").fetchall())
    assert types["budget_usd"] == "double precision" and types["rpm"] == "bigint"  # SQLite's REAL and INTEGER
    d.close()
    Database(url).close()  # opened again: nothing to migrate
    old.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    with pytest.raises(RuntimeError, match="newer fleetlm") as err:
        Database(url)
    assert "s3cret-pw" not in str(err.value)
    old.close()


def test_rows_counts_and_upserts_read_the_same_on_both(db):
    """Rows by name, by index and as dicts; `rowcount` of a line written twice; a batch saved
    twice is one row with the second's values; sums of integers are ints (not Decimal)."""
    b = batches.new_batch("k1", "file-1", "/v1/chat/completions", "24h", {"job": "n"})
    db.call(batches.save, b)
    b.status, b.total, b.errors = "in_progress", 3, [{"line": 1, "message": "x"}]
    db.call(batches.save, b)
    for n, ok in ((1, True), (2, False), (1, True)):  # line 1 twice: kept once, counted once
        db.call(batches.record_line, b.id, n, f"c{n}", 200 if ok else 400, f"line {n}", ok)
    got = db.call(batches.load, b.id)
    assert (got.status, got.total, got.completed, got.failed) == ("in_progress", 3, 1, 1)
    assert got.metadata == {"job": "n"} and got.errors == [{"line": 1, "message": "x"}]
    assert [x.id for x in db.call(batches.unfinished)] == [b.id]
    assert db.call(batches.done_lines, b.id) == {1, 2} and db.call(batches.results, b.id, True) == ["line 1"]
    row = db.call(lambda c: c.execute("SELECT COUNT(*) AS n, SUM(line) AS s, SUM(ok) FROM batch_lines").fetchone())
    assert (row["n"], row["s"], row[2]) == (2, 3, 1) and type(row["s"]) is int
    assert list(dict(row)) == (["n", "s", "sum"] if db.url else ["n", "s", "SUM(ok)"])
    k, _ = db.call(lambda c: keydb.create_key(c, "app", rpm=2**40))  # SQLite integers are 64-bit; so are these
    assert db.call(keydb.find_key, "app").rpm == 2**40 and k.rpm == 2**40


def test_a_transaction_that_fails_leaves_nothing(db):
    from fleetlm.tenants.db import transaction

    def fails(conn):
        with transaction(conn):
            conn.execute("INSERT INTO files (id, purpose, filename, bytes, created, path) VALUES (?, ?, ?, ?, ?, ?)",
                         ("f1", "batch", "a", 1, 0.0, "/x"))
            conn.execute("INSERT INTO files (id, purpose, filename, bytes, created, path) VALUES (?, ?, ?, ?, ?, ?)",
                         ("f1", "batch", "a", 1, 0.0, "/x"))  # the same id: the whole transaction is refused

    with pytest.raises(Exception, match="(?i)unique"):  # sqlite3.IntegrityError | psycopg's UniqueViolation
        db.call(fails)
    assert db.call(lambda c: c.execute("SELECT COUNT(*) FROM files").fetchone()[0]) == 0
    db.call(lambda c: keydb.create_key(c, "after"))  # the connection is usable afterwards


def test_a_connection_the_server_drops_is_replaced(postgres):
    url = postgres.new_database()
    d = Database(url)
    key, _ = d.call(lambda c: keydb.create_key(c, "app"))
    dbname = url.rsplit("/", 1)[1]
    killed = postgres.sql("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                          f"WHERE datname = '{dbname}' AND application_name = 'fleetlm'")
    assert killed == "t"  # and gone: the call waits for it
    with pytest.raises(pytest.importorskip("psycopg").OperationalError):
        d.call(keydb.find_key, key.id)  # the statement that finds the connection gone fails
    assert d.call(keydb.find_key, key.id).name == "app"  # the next one reconnects
    d.close()
