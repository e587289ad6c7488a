"""The tenants' database: keys, the request ledger, files and batches, in one SQLite file
(embedded, WAL mode) or, given a postgresql:// URL, in a PostgreSQL database (tenants/pg.py).

Contract: every statement runs on the database's own thread, in the order it was submitted
(`call` from sync code such as the CLI, `run` from async code, `submit` to not wait): one
connection and one writer, so requests never contend for SQLite's write lock and the event
loop never blocks on a disk write. Statements are parameterised, never formatted. The schema
migrates itself on open (`PRAGMA user_version` counts the migrations applied), so a newer
fleetlm opens an older file. WAL keeps the file whole if the process is killed mid-write:
a transaction is either in it or not. A PostgreSQL database follows the same contract
through a connection that speaks the SQLite SQL written here (see tenants/pg.py).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from fleetlm.config import is_postgres_url

log = logging.getLogger("fleetlm.tenants")
T = TypeVar("T")

# Each entry is one migration, applied once, in order; never edit one that has shipped.
MIGRATIONS = [
    """
    CREATE TABLE keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL,
        created REAL NOT NULL, expires REAL, revoked REAL,
        budget_usd REAL, spent_usd REAL NOT NULL DEFAULT 0, rpm INTEGER, tpm INTEGER,
        models TEXT NOT NULL DEFAULT '*'
    );
    CREATE TABLE requests (
        id TEXT PRIMARY KEY, ts REAL NOT NULL, key_id TEXT, endpoint TEXT NOT NULL,
        model TEXT NOT NULL, served_by TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cached_tokens INTEGER,
        cost_usd REAL NOT NULL, latency_s REAL NOT NULL, status INTEGER NOT NULL,
        parent_id TEXT, batch_id TEXT
    );
    CREATE INDEX requests_by_ts ON requests (ts);
    CREATE INDEX requests_by_key ON requests (key_id, ts);
    CREATE INDEX requests_by_parent ON requests (parent_id);
    """,
    """
    CREATE TABLE files (
        id TEXT PRIMARY KEY, key_id TEXT, purpose TEXT NOT NULL, filename TEXT NOT NULL,
        bytes INTEGER NOT NULL, created REAL NOT NULL, path TEXT NOT NULL
    );
    CREATE TABLE batches (
        id TEXT PRIMARY KEY, key_id TEXT, input_file_id TEXT NOT NULL, endpoint TEXT NOT NULL,
        completion_window TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL,
        in_progress_at REAL, finalizing_at REAL, completed_at REAL, failed_at REAL,
        cancelling_at REAL, cancelled_at REAL, output_file_id TEXT, error_file_id TEXT,
        total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0, metadata TEXT, errors TEXT
    );
    CREATE TABLE batch_lines (
        batch_id TEXT NOT NULL, line INTEGER NOT NULL, custom_id TEXT NOT NULL,
        status INTEGER NOT NULL, body TEXT NOT NULL, ok INTEGER NOT NULL,
        PRIMARY KEY (batch_id, line)
    );
    """,
]


class Database:
    """One SQLite file, or one PostgreSQL database, its connection owned by one thread (see
    the module docstring). `target`: a file path, or a postgresql:// URL."""

    def __init__(self, target: str | Path):
        self.url = str(target) if is_postgres_url(str(target)) else None
        self.path = None if self.url else Path(target)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetlm-db")
        self._conn = None
        try:
            self.call(self._open)
        except BaseException:
            self.close()  # a refused schema or a failed migration leaves no connection open
            raise

    @property
    def where(self) -> str:
        """The file, or the URL without its password (for messages)."""
        from fleetlm.tenants.pg import redact

        return redact(self.url) if self.url else str(self.path)

    def _open(self, _conn) -> None:
        if self.url:
            from fleetlm.tenants import pg

            self._conn = pg.PgConnection(self.url)
            before, after = pg.migrate(self._conn, MIGRATIONS, self._check_version)
            if after > before:
                log.info("database %s: schema migrated from version %d to %d", self.where, before, after)
            return
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process in WAL mode
        conn.execute("PRAGMA busy_timeout=5000")  # another process (the CLI) may hold the lock briefly
        self._conn = conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        self._check_version(version)
        for i in range(version, len(MIGRATIONS)):
            # one transaction per migration (executescript commits any open one first)
            conn.executescript(f"SAVEPOINT migrate; {MIGRATIONS[i]}; PRAGMA user_version = {i + 1}; RELEASE migrate;")
            log.info("database %s: schema migrated to version %d", self.path, i + 1)

    def _check_version(self, version: int) -> None:
        if version > len(MIGRATIONS):
            raise RuntimeError(f"{self.where} was written by a newer fleetlm (schema {version}, "
                               f"this one knows {len(MIGRATIONS)})")

    def call(self, fn: Callable[..., T], *args) -> T:
        """`fn(connection, *args)` on the database thread; waits for its result."""
        return self._pool.submit(self._with_conn, fn, *args).result()

    async def run(self, fn: Callable[..., T], *args) -> T:
        """`call`, awaited without blocking the event loop."""
        return await asyncio.wrap_future(self._pool.submit(self._with_conn, fn, *args))

    def submit(self, fn: Callable, *args) -> Future:
        """`fn(connection, *args)` queued, not waited for; a failure is logged."""
        future = self._pool.submit(self._with_conn, fn, *args)
        future.add_done_callback(_log_failure)
        return future

    def _with_conn(self, fn, *args):
        return fn(self._conn, *args)

    def close(self) -> None:
        """Run what is queued, then close the connection."""
        if self._conn is not None:
            self._pool.submit(self._conn.close).result()
            self._conn = None
        self._pool.shutdown(wait=True)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception (autocommit connection; on
    PostgreSQL a plain BEGIN, see tenants/pg.py)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _log_failure(future: Future) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("database write failed: %r", exc)
