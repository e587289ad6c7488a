"""The Batch API's records and its input format: OpenAI's JSONL of
`{"custom_id", "method": "POST", "url", "body"}`, validated line by line.

Contract: `parse_input` never raises for a bad line: it returns the valid lines and, for
each bad one, an error naming its line number (1-based) and what is wrong (not JSON, a
missing or repeated custom_id, another method or url, a body the endpoint refuses). Each
finished line is one row of `batch_lines` holding its output line, written once (`INSERT
... ON CONFLICT DO NOTHING` on (batch, line), SQL that SQLite and PostgreSQL both take): a
batch resumed after a restart skips the lines it has, so every custom_id appears exactly
once in its output.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from dataclasses import dataclass, field, fields

from pydantic import ValidationError

from fleetlm.openai.protocol import ChatCompletionRequest, CompletionRequest
from fleetlm.tenants.db import transaction

ENDPOINTS = {"/v1/chat/completions": ("chat", ChatCompletionRequest),
             "/v1/completions": ("completions", CompletionRequest)}
UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")
MAX_CUSTOM_ID_CHARS = 512


@dataclass
class Batch:
    id: str
    key_id: str | None
    input_file_id: str
    endpoint: str
    completion_window: str
    status: str  # validating | in_progress | finalizing | completed | failed | cancelling | cancelled
    created: float
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    metadata: dict | None = None
    errors: list[dict] | None = None  # batch-level errors (a file that cannot be read at all)

    def to_json(self) -> dict:
        """OpenAI's Batch object."""
        t = lambda v: int(v) if v else None  # noqa: E731
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint,
                "errors": {"object": "list", "data": self.errors} if self.errors else None,
                "input_file_id": self.input_file_id, "completion_window": self.completion_window,
                "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "created_at": int(self.created), "in_progress_at": t(self.in_progress_at), "expires_at": None,
                "finalizing_at": t(self.finalizing_at), "completed_at": t(self.completed_at),
                "failed_at": t(self.failed_at), "expired_at": None, "cancelling_at": t(self.cancelling_at),
                "cancelled_at": t(self.cancelled_at),
                "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
                "metadata": self.metadata}


@dataclass
class Line:
    number: int  # 1-based line of the input file
    custom_id: str
    request: object  # ChatCompletionRequest | CompletionRequest


@dataclass
class ParsedInput:
    lines: list[Line] = field(default_factory=list)
    errors: list[tuple[int, str | None, str]] = field(default_factory=list)  # (line, custom_id, message)

    @property
    def total(self) -> int:
        return len(self.lines) + len(self.errors)


def parse_input(text: str, endpoint: str) -> ParsedInput:
    """Every non-blank line of `text` checked (see the module docstring)."""
    cls = ENDPOINTS[endpoint][1]
    out, seen = ParsedInput(), {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        custom_id = None
        try:
            item = json.loads(raw)
            if not isinstance(item, dict):
                raise ValueError("a line must be a JSON object")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_CHARS:
                custom_id = None
                raise ValueError(f"custom_id must be a string of 1-{MAX_CUSTOM_ID_CHARS} characters")
            if custom_id in seen:
                raise ValueError(f"custom_id {custom_id!r} is also on line {seen[custom_id]}")
            seen[custom_id] = number
            if item.get("method", "POST") != "POST":
                raise ValueError(f"method must be POST, got {item.get('method')!r}")
            if item.get("url") != endpoint:
                raise ValueError(f"url must be this batch's endpoint {endpoint}, got {item.get('url')!r}")
            unknown = sorted(set(item) - {"custom_id", "method", "url", "body"})
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(unknown)}")
            body = item.get("body")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object (the request)")
            if body.get("stream"):
                raise ValueError("body.stream: a batch request is not streamed")
            req = cls.model_validate(body)
        except json.JSONDecodeError as exc:
            out.errors.append((number, None, f"line {number}: not valid JSON ({exc.msg})"))
            continue
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in ("body", *first.get("loc", ())))
            out.errors.append((number, custom_id, f"line {number}: {where}: {first.get('msg')}"))
            continue
        except ValueError as exc:
            out.errors.append((number, custom_id, f"line {number}: {exc}"))
            continue
        out.lines.append(Line(number, custom_id, req))
    return out


def new_batch(key_id: str | None, input_file_id: str, endpoint: str, window: str, metadata: dict | None) -> Batch:
    return Batch(id=f"batch_{secrets.token_hex(12)}", key_id=key_id, input_file_id=input_file_id, endpoint=endpoint,
                 completion_window=window, status="validating", created=time.time(), metadata=metadata)


def error_line(number: int, custom_id: str | None, status: int | None, error: dict) -> str:
    """An error-file line: OpenAI's shape, plus the input line it came from."""
    response = {"status_code": status, "request_id": None, "body": {"error": error}} if status else None
    return json.dumps({"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id, "line": number,
                       "response": response, "error": {"code": error.get("code"), "message": error["message"]}},
                      ensure_ascii=False)


def output_line(custom_id: str, status: int, body: dict) -> str:
    return json.dumps({"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id,
                       "response": {"status_code": status, "request_id": body.get("id"), "body": body},
                       "error": None}, ensure_ascii=False)


# ---- rows (on the database thread) ----------------------------------------------------------
_COLUMNS = [f.name for f in fields(Batch)]
# an upsert both SQLite (3.24+) and Postgres take: the row is the Batch as it is now
_UPSERT = (f"INSERT INTO batches ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
           f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _COLUMNS[1:])}")


def save(conn: sqlite3.Connection, b: Batch) -> None:
    values = [json.dumps(getattr(b, c)) if c in ("metadata", "errors") and getattr(b, c) is not None
              else getattr(b, c) for c in _COLUMNS]
    with transaction(conn):
        conn.execute(_UPSERT, values)


def load(conn: sqlite3.Connection, batch_id: str) -> Batch | None:
    row = conn.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
    return _batch(row) if row else None


def unfinished(conn: sqlite3.Connection) -> list[Batch]:
    rows = conn.execute(f"SELECT * FROM batches WHERE status IN ({', '.join('?' * len(UNFINISHED))}) "
                        "ORDER BY created", UNFINISHED).fetchall()
    return [_batch(r) for r in rows]


def listed(conn: sqlite3.Connection, key_id: str | None, master: bool, limit: int, after: str | None) -> list[Batch]:
    where, args = [], []
    if not master:
        where.append("key_id = ?")
        args.append(key_id)
    if after:
        where.append("created < (SELECT created FROM batches WHERE id = ?)")
        args.append(after)
    sql = "SELECT * FROM batches" + (f" WHERE {' AND '.join(where)}" if where else "")
    return [_batch(r) for r in conn.execute(sql + " ORDER BY created DESC LIMIT ?", (*args, limit)).fetchall()]


def record_line(conn: sqlite3.Connection, batch_id: str, number: int, custom_id: str, status: int, text: str,
                ok: bool) -> None:
    """A finished line (kept once), and the batch's counts."""
    with transaction(conn):
        cur = conn.execute("INSERT INTO batch_lines (batch_id, line, custom_id, status, body, ok) "
                           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                           (batch_id, number, custom_id, status, text, int(ok)))
        if cur.rowcount:
            column = "completed" if ok else "failed"
            conn.execute(f"UPDATE batches SET {column} = {column} + 1 WHERE id = ?", (batch_id,))


def done_lines(conn: sqlite3.Connection, batch_id: str) -> set[int]:
    return {r[0] for r in conn.execute("SELECT line FROM batch_lines WHERE batch_id = ?", (batch_id,))}


def results(conn: sqlite3.Connection, batch_id: str, ok: bool) -> list[str]:
    return [r[0] for r in conn.execute("SELECT body FROM batch_lines WHERE batch_id = ? AND ok = ? ORDER BY line",
                                       (batch_id, int(ok)))]


def _batch(row: sqlite3.Row) -> Batch:
    values = dict(row)
    for c in ("metadata", "errors"):
        values[c] = json.loads(values[c]) if values[c] else None
    return Batch(**values)
