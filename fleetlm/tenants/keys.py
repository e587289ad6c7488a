"""API keys: created with a secret shown once, stored as a hash, found by the hash of what a
client sends.

Contract: a secret is `fk-` + 43 URL-safe characters (256 random bits); only its SHA-256 is
stored (a fast hash is enough for a random secret of that length: there is nothing to guess
a dictionary from), with its first characters as a display prefix. A key allows the model
ids its glob patterns match (`gemma-3-270m*,router/*`; `*`: all). The functions here take
the database connection and run on the database thread (`Database.call` / `run`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass

from fleetlm.tenants.db import transaction

SECRET_PREFIX = "fk-"
MAX_SECRET_CHARS = 128  # a longer bearer token is not a key: refused before it is hashed
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class Key:
    id: str
    name: str
    prefix: str  # the secret's first characters, to recognise it in a list
    created: float  # unix time
    expires: float | None = None  # unix time; None: never
    revoked: float | None = None  # unix time it was revoked
    budget_usd: float | None = None  # None: no budget
    spent_usd: float = 0.0
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens (prompt + completion) per minute
    models: tuple[str, ...] = ("*",)  # glob patterns of the model ids it may use

    def allows(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def state(self, now: float | None = None) -> str:
        """"active", "revoked" or "expired"."""
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and (now or time.time()) >= self.expires:
            return "expired"
        return "active"

    def to_json(self) -> dict:
        """The admin API's key object (never the secret, never its hash)."""
        return {"id": self.id, "object": "api_key", "name": self.name, "prefix": self.prefix,
                "created": int(self.created), "expires": int(self.expires) if self.expires else None,
                "revoked": int(self.revoked) if self.revoked else None, "state": self.state(),
                "budget_usd": self.budget_usd, "spent_usd": round(self.spent_usd, 9), "rpm": self.rpm,
                "tpm": self.tpm, "models": list(self.models)}


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def parse_duration(text: str) -> float:
    """"30d", "12h", "90m", "1w2d" -> seconds; ValueError naming the text otherwise."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ValueError(f"duration {text!r}: use a number and a unit (s, m, h, d, w), e.g. 30d or 12h")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def parse_models(text: str | list[str] | None) -> tuple[str, ...]:
    """`"gemma-3-270m*,router/*"` (or a list) -> glob patterns; None or empty: all models."""
    items = text.split(",") if isinstance(text, str) else list(text or [])
    patterns = tuple(p.strip() for p in items if p.strip())
    for p in patterns:
        if len(p) > 200 or not p.isprintable():
            raise ValueError(f"model pattern {p[:40]!r}: printable, at most 200 characters")
    return patterns or ("*",)


def create_key(conn: sqlite3.Connection, name: str, *, budget_usd: float | None = None, rpm: int | None = None,
               tpm: int | None = None, models: tuple[str, ...] = ("*",),
               expires_in_s: float | None = None) -> tuple[Key, str]:
    """A new key and its secret (the only time the secret exists outside the client)."""
    if not name or len(name) > 200 or not name.isprintable():
        raise ValueError("a key's name must be 1-200 printable characters")
    for what, value in (("budget_usd", budget_usd), ("rpm", rpm), ("tpm", tpm), ("expires", expires_in_s)):
        if value is not None and not value > 0:
            raise ValueError(f"{what} must be > 0, got {value}")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    key = Key(id=f"key_{secrets.token_hex(8)}", name=name, prefix=secret[:10], created=now,
              expires=now + expires_in_s if expires_in_s else None, budget_usd=budget_usd, rpm=rpm, tpm=tpm,
              models=tuple(models))
    with transaction(conn):
        conn.execute("INSERT INTO keys (id, name, hash, prefix, created, expires, budget_usd, rpm, tpm, models) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (key.id, key.name, hash_secret(secret), key.prefix, key.created, key.expires, budget_usd,
                      rpm, tpm, ",".join(key.models)))
    return key, secret


def key_by_hash(conn: sqlite3.Connection, digest: str) -> Key | None:
    row = conn.execute("SELECT * FROM keys WHERE hash = ?", (digest,)).fetchone()
    return _key(row) if row else None


def find_key(conn: sqlite3.Connection, ident: str) -> Key | None:
    """A key by its id, or by its name when exactly one key has it."""
    row = conn.execute("SELECT * FROM keys WHERE id = ?", (ident,)).fetchone()
    if row is None:
        rows = conn.execute("SELECT * FROM keys WHERE name = ?", (ident,)).fetchall()
        row = rows[0] if len(rows) == 1 else None
    return _key(row) if row else None


def list_keys(conn: sqlite3.Connection) -> list[Key]:
    return [_key(r) for r in conn.execute("SELECT * FROM keys ORDER BY created")]


def revoke_key(conn: sqlite3.Connection, key_id: str) -> Key | None:
    with transaction(conn):
        conn.execute("UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), key_id))
    return find_key(conn, key_id)


def _key(row: sqlite3.Row) -> Key:
    return Key(id=row["id"], name=row["name"], prefix=row["prefix"], created=row["created"], expires=row["expires"],
               revoked=row["revoked"], budget_usd=row["budget_usd"], spent_usd=row["spent_usd"], rpm=row["rpm"],
               tpm=row["tpm"], models=tuple(row["models"].split(",")))
