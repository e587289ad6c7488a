"""HTTP middleware: request-body limit (413) and bearer-key auth (401), with request counts.

Contract: a body over `max_bytes` is refused whether or not Content-Length is sent. With
tenants configured, every path but /health needs `Authorization: Bearer <key>`, a tenant's
key or the master key (the server's `api_key`), and /v1/admin/* the master key (403
otherwise); with only an API key, every path but OPEN_PATHS needs that key (compared in
constant time). Whoever called is left in the request's state (`request.state.caller`, a
`fleetlm.tenants.gate.Caller`). Every request is counted by route and status; unknown paths
share one label, so random paths cannot grow the label set."""

from __future__ import annotations

import asyncio
import hmac
import logging

from fastapi import FastAPI
from starlette.exceptions import HTTPException

from fleetlm.api.errors import error_response
from fleetlm.api.metrics import Metrics

OPEN_PATHS = ("/health", "/metrics", "/docs", "/openapi.json")
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models")
MAX_AUTHORIZATION_BYTES = 1024  # a longer Authorization header holds no key of ours: 401, not read


class BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, whether or not Content-Length is sent;
    file uploads (/v1/files) have their own, larger limit."""

    def __init__(self, app, max_bytes: int, upload_bytes: int | None = None):
        self.app, self.max_bytes, self.upload_bytes = app, max_bytes, upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_bytes if self.upload_bytes and scope["path"] == "/v1/files" else self.max_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._reject(send, limit)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # an HTTPException, so the body parser passes it on (it turns others into a 400)
                    raise _TooLarge(413, f"request body larger than {limit} bytes")
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:  # raised where no exception handler runs
            await self._reject(send, limit)

    async def _reject(self, send, limit: int):
        resp = error_response(413, f"request body larger than {limit} bytes")
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})


class _TooLarge(HTTPException):
    pass


class AuthAndCount:
    """ASGI middleware: the bearer key check, and one count per request by route and status.
    Plain ASGI (not Starlette's BaseHTTPMiddleware), so `Request.is_disconnected()` still
    sees a client that goes away."""

    def __init__(self, app, metrics: Metrics, api_key: str | None, tenants=None):
        self.app, self.metrics, self.api_key, self.tenants = app, metrics, api_key, tenants

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        label = path if path in ROUTES else "other"
        guarded = path != "/health" if self.tenants is not None else \
            bool(self.api_key) and not path.startswith(OPEN_PATHS)
        if guarded:
            caller, why = await self._caller(_bearer(scope))
            refusal = None
            if caller is None:
                refusal = error_response(401, f"{why} (send Authorization: Bearer <key>)", code="invalid_api_key")
            elif path.startswith("/v1/admin") and not caller.is_master:
                refusal = error_response(403, "the admin API needs the master key", code="permission_denied")
            if refusal is not None:
                self.metrics.requests.labels(label, str(refusal.status_code)).inc()
                return await refusal(scope, receive, send)
            scope.setdefault("state", {})["caller"] = caller
        status = "500"  # if the app fails before it answers

        async def counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.requests.labels(label, status).inc()

    async def _caller(self, token: str):
        if self.tenants is not None:
            return await self.tenants.authenticate(token)
        from fleetlm.tenants.gate import Caller

        if hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self.api_key.encode()):
            return Caller(None), ""
        return None, "invalid or missing API key"


def _bearer(scope) -> str:
    """The bearer token of the Authorization header ("" if none, or if it is too long to be a key)."""
    header = dict(scope.get("headers") or []).get(b"authorization", b"")
    if len(header) > MAX_AUTHORIZATION_BYTES:
        return ""
    text = header.decode("latin-1")
    return text[7:].strip() if text.lower().startswith("bearer ") else ""


def install_middleware(app: FastAPI, metrics: Metrics, *, api_key: str | None, max_body_bytes: int,
                       tenants=None, upload_bytes: int | None = None, send_timeout_s: float = 60.0) -> None:
    """Body limit outermost, then auth and counting."""
    app.add_middleware(AuthAndCount, metrics=metrics, api_key=api_key, tenants=tenants)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, upload_bytes=upload_bytes)
    app.add_middleware(HeaderLimit)  # outermost of all: header bounds (431) before the body and the key
    app.add_middleware(SendTimeout, timeout_s=send_timeout_s)  # (bar this one, which only watches sends)


MAX_HEADERS = 100  # header lines in one request
MAX_HEADER_BYTES = 64 * 2**10  # their names and values together, the Authorization header aside


class HeaderLimit:
    """ASGI middleware: 431 for more than `max_count` headers or more than `max_bytes` of
    header names and values. The Authorization header's size is left out: an over-long or
    malformed key is the auth check's to answer, as the invalid key (401) it is. Plain ASGI,
    like the others, so disconnects stay visible to the app."""

    def __init__(self, app, max_count: int = MAX_HEADERS, max_bytes: int = MAX_HEADER_BYTES):
        self.app, self.max_count, self.max_bytes = app, max_count, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = scope.get("headers") or []
            size = sum(len(name) + len(value) for name, value in headers if name != b"authorization")
            if len(headers) > self.max_count or size > self.max_bytes:
                resp = error_response(431, f"request headers too large: {len(headers)} headers of {size} bytes; "
                                           f"at most {self.max_count} headers and {self.max_bytes} bytes "
                                           "(the Authorization header aside) are accepted",
                                      code="request_header_fields_too_large")
                return await resp(scope, receive, send)
        await self.app(scope, receive, send)


log = logging.getLogger("fleetlm.api")


class SendTimeout:
    """ASGI middleware: a response message the client does not take within `timeout_s` (it
    stopped reading and the socket buffers are full) ends the response as a disconnect would:
    the app's cleanup runs, so the request's engine rows, KV blocks and admission slot are
    freed. uvicorn has no such bound; without it a client that never reads holds them forever.
    Only time spent blocked in `send` counts, never time waiting for the next token."""

    def __init__(self, app, timeout_s: float):
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def bounded(message):
            try:
                async with asyncio.timeout(self.timeout_s):
                    await send(message)
            except TimeoutError:
                raise _Stalled() from None

        try:
            await self.app(scope, receive, bounded)
        except _Stalled:  # uvicorn then closes the connection (it logs an incomplete response)
            log.warning("dropped a client that read nothing for %g s (%s %s)", self.timeout_s, scope.get("method"),
                        scope.get("path"))


class _Stalled(Exception):
    pass
