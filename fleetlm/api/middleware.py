"""HTTP middleware: request-body limit (413) and bearer-key auth (401), with request counts.

Contract: a body over `max_bytes` is refused whether or not Content-Length is sent; with an
API key configured, every path but OPEN_PATHS needs `Authorization: Bearer <key>` (compared
in constant time). Every request is counted by route and status; unknown paths share one
label, so random paths cannot grow the label set."""

from __future__ import annotations

import asyncio
import hmac
import logging

from fastapi import FastAPI

from fleetlm.api.errors import error_response
from fleetlm.api.metrics import Metrics

OPEN_PATHS = ("/health", "/metrics", "/docs", "/openapi.json")
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models")


class BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, whether or not Content-Length is sent."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send):
        resp = error_response(413, f"request body larger than {self.max_bytes} bytes")
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})


class _TooLarge(Exception):
    pass


class AuthAndCount:
    """ASGI middleware: the bearer key check, and one count per request by route and status.
    Plain ASGI (not Starlette's BaseHTTPMiddleware), so `Request.is_disconnected()` still
    sees a client that goes away."""

    def __init__(self, app, metrics: Metrics, api_key: str | None):
        self.app, self.metrics, self.api_key = app, metrics, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        label = path if path in ROUTES else "other"
        if self.api_key and not path.startswith(OPEN_PATHS):
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                self.metrics.requests.labels(label, "401").inc()
                resp = error_response(401, "invalid or missing API key (Authorization: Bearer ...)",
                                      code="invalid_api_key")
                return await resp(scope, receive, send)
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


def install_middleware(app: FastAPI, metrics: Metrics, *, api_key: str | None, max_body_bytes: int,
                       send_timeout_s: float = 60.0) -> None:
    """Body limit outermost, then auth and counting."""
    app.add_middleware(AuthAndCount, metrics=metrics, api_key=api_key)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
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
