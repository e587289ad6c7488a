"""The usage ledger: one row per request, whatever path served it, and the reports read
from it.

Contract: `write` inserts rows and adds their cost to their keys' spend in one transaction.
A compound program's sub-calls are rows of their own whose `parent_id` is the program's
request, and whose cost is already in the parent's: reports sum only rows without a parent.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import astuple, dataclass, fields

from fleetlm.tenants.db import transaction


@dataclass
class LedgerRow:
    id: str  # the response id the client saw (chatcmpl-..., cmpl-...), or a sub-call's
    ts: float  # unix time the request ended
    key_id: str | None  # None: the master key, or a server without keys
    endpoint: str  # "chat" | "completions"
    model: str  # the model id asked for
    served_by: str  # the model that answered ("" if none did)
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None
    cost_usd: float  # what the key is charged (batch requests at their discount)
    latency_s: float
    status: int  # 200, an error's status, 499: the client went away
    parent_id: str | None = None  # a sub-call's program request
    batch_id: str | None = None


_COLUMNS = [f.name for f in fields(LedgerRow)]
# a row already written (a retried write) is kept as it was; SQL that SQLite and Postgres both take
_INSERT = (f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
           "ON CONFLICT DO NOTHING")


def write(conn: sqlite3.Connection, rows: list[LedgerRow]) -> None:
    with transaction(conn):
        conn.executemany(_INSERT, [astuple(r) for r in rows])
        for r in rows:
            if r.key_id is not None and r.parent_id is None and r.cost_usd:
                conn.execute("UPDATE keys SET spent_usd = spent_usd + ? WHERE id = ?", (r.cost_usd, r.key_id))


def usage(conn: sqlite3.Connection, *, by: str = "key", since_s: float | None = None,
          key_id: str | None = None) -> list[dict]:
    """Requests, tokens and cost per key (`by="key"`) or per model asked for (`by="model"`)
    over the last `since_s` seconds (None: all time), largest cost first."""
    if by not in ("key", "model"):
        raise ValueError(f"usage by {by!r}: use key or model")
    group = "COALESCE(keys.name, '(master)')" if by == "key" else "requests.model"
    where, args = ["requests.parent_id IS NULL"], []
    if since_s is not None:
        where.append("requests.ts >= ?")
        args.append(time.time() - since_s)
    if key_id is not None:
        where.append("requests.key_id = ?")
        args.append(key_id)
    rows = conn.execute(
        f"SELECT {group} AS name, COUNT(*) AS requests, "
        "SUM(CASE WHEN requests.status >= 400 THEN 1 ELSE 0 END) AS errors, "
        "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
        "SUM(COALESCE(cached_tokens, 0)) AS cached_tokens, SUM(cost_usd) AS cost_usd "
        "FROM requests LEFT JOIN keys ON keys.id = requests.key_id "
        f"WHERE {' AND '.join(where)} GROUP BY {group} ORDER BY cost_usd DESC, requests DESC", args).fetchall()
    return [dict(r) for r in rows]


def rows_for(conn: sqlite3.Connection, *, key_id: str | None = None, limit: int = 1000) -> list[LedgerRow]:
    """The latest rows (of one key), newest first."""
    sql, args = "SELECT * FROM requests", []
    if key_id is not None:
        sql, args = sql + " WHERE key_id = ?", [key_id]
    rows = conn.execute(sql + " ORDER BY ts DESC LIMIT ?", (*args, limit)).fetchall()
    return [LedgerRow(**{c: r[c] for c in _COLUMNS}) for r in rows]
