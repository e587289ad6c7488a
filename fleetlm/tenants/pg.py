"""PostgreSQL for the tenants' database: a connection that looks, to keys.py, ledger.py,
batches.py and files.py, like the SQLite connection they were written for.

Contract: `PgConnection` offers the small surface those functions use — `execute(sql, args)`
returning a cursor (`fetchone`, `fetchall`, `rowcount`, iteration), `executemany` and
`executescript` — and rows readable by column name, by index and as `dict(row)`, as
`sqlite3.Row` is. The SQL they pass is SQLite's, translated here and nowhere else: `?`
placeholders become `%s` (a `?` or `%` inside a quoted literal is left alone), `BEGIN
IMMEDIATE` becomes `BEGIN`, and in a migration script `REAL` becomes `DOUBLE PRECISION` and
`INTEGER` becomes `BIGINT` (SQLite's REAL is an 8-byte float and its INTEGER 64 bits: the
same ranges on both). Everything else is SQL both accept, written so at its source (upserts
with `ON CONFLICT`, `CASE` instead of summing booleans). `schema_version` (one row) counts the
migrations applied, as `PRAGMA user_version` does in a SQLite file. The connection is in
autocommit mode, as the SQLite one is, so `transaction()`'s BEGIN/COMMIT are the only
transactions. It is used by one thread at a time (the database thread); a connection the
server dropped fails the statement that found it, and the next statement reconnects.

psycopg 3 is imported only here, only for a postgresql:// URL: `pip install 'fleetlm[postgres]'`.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Sequence

log = logging.getLogger("fleetlm.tenants")

_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?|%")  # quoted literals/names first, so they are skipped
_TYPES = {"REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT"}
_TYPE = re.compile(r"\b(REAL|INTEGER)\b")


def redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    return re.sub(r"^([a-z]+://[^:/@]*):[^/]*@", r"\1:***@", url)  # greedy: up to the last @ of the authority


@functools.lru_cache(maxsize=512)
def translate(sql: str, with_args: bool = True) -> str:
    """SQLite's SQL as psycopg takes it (see the module docstring). Without arguments psycopg
    reads `%` literally, so only a statement with arguments has it doubled."""
    if sql.strip().upper() == "BEGIN IMMEDIATE":  # Postgres locks rows as they are written
        return "BEGIN"

    def sub(m: re.Match) -> str:
        t = m.group(0)
        if t == "?":
            return "%s"
        if t == "%":
            return "%%" if with_args else "%"
        return t

    return _TOKEN.sub(sub, sql)


class Row:
    """A result row readable by index, by column name and as `dict(row)` (sqlite3.Row's surface)."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence):
        self._names, self._values = names, values

    def __getitem__(self, key):
        return self._values[self._names[key]] if isinstance(key, str) else self._values[key]

    def keys(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self):
        return iter(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values))!r})"


def _row_factory(cursor):
    names: dict[str, int] = {}
    for i, c in enumerate(cursor.description or []):
        names.setdefault(c.name, i)  # a repeated name reads the first column with it, as in SQLite
    return lambda values: Row(names, values)


class PgConnection:
    """One psycopg connection behind the surface of a SQLite connection (module docstring)."""

    def __init__(self, url: str):
        try:
            import psycopg  # noqa: F401  (only a postgresql:// database needs it)
        except ImportError as exc:
            raise RuntimeError(f"[tenants] database {redact(url)} is PostgreSQL, which needs psycopg 3: "
                               "pip install 'fleetlm[postgres]'") from exc
        self.url = url
        self._conn = self._connect()

    def _connect(self):
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
        from psycopg.types.numeric import NumericLoader

        class IntOrFloat(NumericLoader):
            # SUM over a BIGINT column is NUMERIC in Postgres: read it back as the int (or float)
            # SQLite returns, so reports stay JSON-serialisable (no Decimal)
            def load(self, data):
                d = super().load(data)
                return int(d) if d.is_finite() and d == d.to_integral_value() else float(d)

        extra = {"application_name": "fleetlm"}
        if "connect_timeout" not in conninfo_to_dict(self.url):
            extra["connect_timeout"] = 10  # libpq waits forever for a server that does not answer
        try:
            conn = psycopg.connect(self.url, autocommit=True, row_factory=_row_factory, **extra)
        except psycopg.OperationalError as exc:
            raise RuntimeError(f"cannot connect to {redact(self.url)}: {str(exc).strip()}") from None
        conn.adapters.register_loader("numeric", IntOrFloat)
        return conn

    def _live(self):
        # a connection the server dropped (a restart, an idle timeout) is replaced when no
        # transaction is open on it; inside one, the error stands (the transaction is lost)
        if self._conn.broken or self._conn.closed:
            log.warning("database %s: connection lost; reconnecting", redact(self.url))
            self._conn = self._connect()
        return self._conn

    def execute(self, sql: str, args: Sequence = ()):
        if args:
            return self._live().execute(translate(sql), args)
        return self._live().execute(translate(sql, with_args=False))

    def executemany(self, sql: str, rows: Iterable[Sequence]):
        cur = self._live().cursor()
        cur.executemany(translate(sql), list(rows))
        return cur

    def executescript(self, script: str) -> None:
        """A migration: SQLite's column types mapped (module docstring), statements run as one
        query (psycopg allows several in a query without arguments)."""
        self._live().execute(_TYPE.sub(lambda m: _TYPES[m.group(1)], script))

    def close(self) -> None:
        self._conn.close()


def migrate(conn: PgConnection, migrations: list[str], check) -> tuple[int, int]:
    """Apply the migrations a database lacks, all in one transaction (DDL is transactional
    in Postgres: all or none). `check(version)` raises for a database newer than this code.
    Another process opening the same database at once waits on the lock, then finds it
    migrated. Returns (version before, version after)."""
    from fleetlm.tenants.db import transaction

    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    with transaction(conn):
        conn.execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        check(version)
        for sql in migrations[version:]:
            conn.executescript(sql)
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (len(migrations),))
        elif version < len(migrations):
            conn.execute("UPDATE schema_version SET version = ?", (len(migrations),))
    return version, max(version, len(migrations))
