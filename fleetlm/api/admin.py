"""The admin API (master key only; see docs/tenants.md for the shapes): keys and usage.

    POST   /v1/admin/keys               {name, budget_usd?, rpm?, tpm?, models?, expires_in?}
                                        -> the key object plus `secret` (shown this once)
    GET    /v1/admin/keys               -> {"object": "list", "data": [key, ...]}
    GET    /v1/admin/keys/{id}          -> key (id or a unique name)
    DELETE /v1/admin/keys/{id}          -> the key, revoked (it stops working at once)
    GET    /v1/admin/usage?by=key|model&since=1d&key=<id>
                                        -> {"object": "list", "data": [{name, requests, ...}]}
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from fleetlm.openai.errors import BadRequestError, NotFoundError
from fleetlm.tenants import keys as keydb
from fleetlm.tenants import ledger


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    budget_usd: float | None = Field(default=None, gt=0)
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    models: list[str] | str | None = None  # glob patterns, a list or "a*,b/*"; None: all
    expires_in: str | None = Field(default=None, max_length=32)  # "30d", "12h"


def install_admin(app: FastAPI, tenants) -> None:
    """Routes over `tenants` (a fleetlm.tenants.gate.Tenants); the middleware admits only the
    master key to /v1/admin."""

    @app.post("/v1/admin/keys")
    async def create_key(body: CreateKeyRequest) -> dict:
        try:
            limits = dict(budget_usd=body.budget_usd, rpm=body.rpm, tpm=body.tpm,
                          models=keydb.parse_models(body.models),
                          expires_in_s=keydb.parse_duration(body.expires_in) if body.expires_in else None)
            key, secret = await tenants.create_key(body.name, **limits)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None
        return {**key.to_json(), "secret": secret}

    @app.get("/v1/admin/keys")
    async def list_keys() -> dict:
        return {"object": "list", "data": [k.to_json() for k in await tenants.db.run(keydb.list_keys)]}

    @app.get("/v1/admin/keys/{ident}")
    async def get_key(ident: str) -> dict:
        key = await tenants.db.run(keydb.find_key, ident)
        if key is None:
            raise NotFoundError(f"no key {ident!r}", param="id", code="key_not_found")
        return key.to_json()

    @app.delete("/v1/admin/keys/{ident}")
    async def revoke_key(ident: str) -> dict:
        key = await tenants.revoke_key(ident)
        if key is None:
            raise NotFoundError(f"no key {ident!r}", param="id", code="key_not_found")
        return key.to_json()

    @app.get("/v1/admin/usage")
    async def usage(by: str = "key", since: str | None = None, key: str | None = None) -> dict:
        try:
            since_s = keydb.parse_duration(since) if since else None
            rows = await tenants.db.run(lambda c: ledger.usage(c, by=by, since_s=since_s, key_id=key))
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None
        return {"object": "list", "data": rows}
