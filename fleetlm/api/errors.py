"""Errors -> OpenAI-shaped JSON responses, installed once on the app: `APIError`s raised
anywhere below (see fleetlm.openai.errors), request-validation failures and unexpected
exceptions (a 500 means a fleetlm bug)."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetlm.openai.errors import APIError, error_body

log = logging.getLogger("fleetlm.api")


def error_response(status: int, message: str, *, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    # pydantic lists one error per union branch; a validator's own message (value_error) says
    # more than "should be a valid string" from a branch the value was never meant for
    first = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    unicode = next((e for e in errors if e.get("type") == "string_unicode"), None)
    if unicode is not None:  # a constrained string pydantic could not read: a lone surrogate
        where = ".".join(str(x) for x in unicode.get("loc", ()) if x != "body" and "[" not in str(x))
        return f"{where} is not valid Unicode text (it holds a lone surrogate); send UTF-8 text", where or None
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    if first.get("type") == "extra_forbidden":
        return f"unknown field: {'.'.join(loc)}", ".".join(loc) or None
    if first.get("type") == "missing":
        return f"missing required field: {'.'.join(loc)}", ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    return f"invalid value for {'.'.join(loc) or 'body'}: {msg}", ".".join(loc) or None


def _parse_failure(cause: BaseException | None) -> str | None:
    """Why FastAPI could not parse a JSON body ("There was an error parsing the body" says
    nothing): nested past Python's recursion limit, or an integer of more than 4,300 digits."""
    if isinstance(cause, RecursionError):
        return "request body is nested too deeply to parse (arrays and objects some 1,000 levels deep)"
    if isinstance(cause, ValueError):
        return f"request body is not valid JSON: {cause}"
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(json.JSONDecodeError)
    async def _bad_json(_: Request, exc: json.JSONDecodeError):
        return error_response(400, f"request body is not valid JSON: {exc.msg}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, _parse_failure(exc.__cause__) or str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}")
