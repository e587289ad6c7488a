"""Typed errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` plus a
status. Targets raise them; only the HTTP edge (`fleetlm.api`) turns them into responses.

Every client mistake is a 4xx here; a 5xx is a failure of something the request reached (an
upstream, the engine) or a fleetlm bug. A router falls back on a 5xx raised before the first
chunk, and on an `UnsupportedError`; never on another 4xx (another model would reject the
request too).
"""

from __future__ import annotations

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
          431: "invalid_request_error", 499: "invalid_request_error", 500: "server_error", 502: "server_error",
          503: "service_unavailable", 504: "server_error"}


class APIError(Exception):
    """An error with its HTTP status; `headers` are extra response headers (Retry-After)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)


class BadRequestError(APIError):
    """400: the request cannot be served as written (by any model)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(400, message, param=param, code=code)


class UnsupportedError(BadRequestError):
    """400: this model cannot serve a request of this shape (`tools` to a program, `n` to an
    agent, completions to a chat-only model); another model might. A router tries its next
    candidate."""


class NotFoundError(APIError):
    """404: the model (or adapter) does not exist."""

    def __init__(self, message: str, *, param: str | None = "model", code: str | None = "model_not_found"):
        super().__init__(404, message, param=param, code=code)


class RateLimitError(APIError):
    """429: over capacity or a limit; retry after `retry_after_s`."""

    def __init__(self, message: str, *, retry_after_s: int = 1, code: str = "rate_limit_exceeded"):
        super().__init__(429, message, code=code, headers={"Retry-After": str(retry_after_s)})


class UnavailableError(APIError):
    """502 (an upstream failed or is unreachable) or 503 (the local engine stopped)."""

    def __init__(self, message: str, *, status: int = 502, code: str | None = "upstream_error"):
        super().__init__(status, message, code=code)


class UpstreamTimeoutError(APIError):
    """504: an upstream did not answer in time."""

    def __init__(self, message: str):
        super().__init__(504, message, code="upstream_timeout")


class ClientDisconnectedError(APIError):
    """499 (nginx's code): the client went away before the answer was ready."""

    def __init__(self, message: str = "client disconnected"):
        super().__init__(499, message)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
