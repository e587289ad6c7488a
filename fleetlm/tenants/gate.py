"""The tenants' gate, used by the HTTP edge: who is calling, may they, and what it cost.

Contract:
- `authenticate(token)`: the master key (the server's `api_key`, compared in constant time)
  or an active tenant key, found by the SHA-256 of the token; anything else (unknown,
  revoked, expired, over-long, not a key's shape) is `None` with the reason;
- `admit(caller, model, req, target, catalog)`: a tenant's model allowlist (403), then its
  rpm / tpm / budget (429, Retry-After) with the request's worst case reserved
  (`fleetlm.tenants.estimate`); the master key passes with no reservation;
- `settle(reservation, row, calls)`: the reservation swapped for the real cost, the ledger
  row (and a program's sub-call rows) queued for the database, every request whatever its
  status.
A key read from the database is trusted for `key_cache_s` seconds, then read again, so a
key revoked from another process stops working within that time (at once from this one).
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from fleetlm.config import TenantsConfig
from fleetlm.openai.errors import APIError
from fleetlm.tenants import keys as keydb
from fleetlm.tenants import ledger
from fleetlm.tenants.db import Database
from fleetlm.tenants.estimate import worst_case
from fleetlm.tenants.keys import MAX_SECRET_CHARS, SECRET_PREFIX, Key, hash_secret
from fleetlm.tenants.ledger import LedgerRow
from fleetlm.tenants.limits import Limiter, Reservation


@dataclass
class Caller:
    key: Key | None  # None: the master key

    @property
    def is_master(self) -> bool:
        return self.key is None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None

    def allows(self, model: str) -> bool:
        return self.key is None or self.key.allows(model)


class Tenants:
    def __init__(self, config: TenantsConfig, *, master_key: str | None, db: Database | None = None):
        self.config, self.master_key = config, master_key
        self.db = db or Database(config.database)
        self.limiter = Limiter()
        self._keys: dict[str, tuple[Key, float]] = {}  # token hash -> (key, when read); one entry per key

    # ---- who is calling -------------------------------------------------------------------
    async def authenticate(self, token: str) -> tuple[Caller | None, str]:
        """(the caller, "") or (None, why not)."""
        if self.master_key and hmac.compare_digest(token.encode("utf-8", "surrogatepass"),
                                                   self.master_key.encode()):
            return Caller(None), ""
        if not token.startswith(SECRET_PREFIX) or len(token) > MAX_SECRET_CHARS or not token.isascii():
            return None, "invalid API key"
        digest = hash_secret(token)
        hit = self._keys.get(digest)
        if hit is not None and time.monotonic() - hit[1] < self.config.key_cache_s:
            key = hit[0]
        else:
            key = await self.db.run(keydb.key_by_hash, digest)
            if key is None:
                self._keys.pop(digest, None)
                return None, "invalid API key"
            self._keys[digest] = (key, time.monotonic())
            self.limiter.observe(key)
        state = key.state()
        return (Caller(key), "") if state == "active" else (None, f"API key {state}")

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (revoked here: it stops working at once)."""
        self._keys = {h: (k, t) for h, (k, t) in self._keys.items() if k.id != key_id}

    # ---- may they -------------------------------------------------------------------------
    def check_model(self, caller: Caller, model: str) -> None:
        if not caller.allows(model):
            raise APIError(403, f"key {caller.key.name} may not use model {model!r}", param="model",
                           code="model_not_allowed")

    def admit(self, caller: Caller, model: str, req, target, catalog) -> Reservation | None:
        self.check_model(caller, model)
        if caller.key is None:
            return None
        est = worst_case(req, target, catalog, default_max_tokens=self.config.default_max_tokens)
        return self.limiter.admit(caller.key, est)

    # ---- what it cost ---------------------------------------------------------------------
    def settle(self, res: Reservation | None, row: LedgerRow, calls=()) -> None:
        if res is not None:
            self.limiter.settle(res, row.cost_usd, row.prompt_tokens + row.completion_tokens)
        rows = [row] + [LedgerRow(f"{row.id}/{i}", row.ts, row.key_id, row.endpoint, c.model, c.served_by,
                                  c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.cached_tokens,
                                  c.usage.cost_usd, 0.0, 200, parent_id=row.id, batch_id=row.batch_id)
                        for i, c in enumerate(calls)]
        self.db.submit(ledger.write, rows)

    # ---- keys (the admin API and the CLI share these) ---------------------------------------
    async def create_key(self, name: str, **limits) -> tuple[Key, str]:
        return await self.db.run(lambda conn: keydb.create_key(conn, name, **limits))

    async def revoke_key(self, ident: str) -> Key | None:
        key = await self.db.run(keydb.find_key, ident)
        if key is None:
            return None
        self.forget(key.id)
        return await self.db.run(keydb.revoke_key, key.id)

    def close(self) -> None:
        self.db.close()
