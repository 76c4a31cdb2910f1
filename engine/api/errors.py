"""One error shape for every answer that is not a success.

`{"error": {"code": "...", "message": "...", "fields": [...]}}` — `code` is stable (clients
branch on it), `message` is for people, `fields` names what to fix in the request. No
stack trace ever leaves the process: unexpected errors are logged and answered with a
generic 500.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.db import is_unavailable
from engine.errors import (
    BotConfigError,
    BotEngineError,
    BotNotFoundError,
    BrokerUnavailableError,
    ConfigError,
    ExchangeError,
)
from engine.logging import get_logger

log = get_logger("engine.api")

_PROBLEM = re.compile(r"^(?P<source>.+?):(?P<line>\d+): (?P<field>\S+): (?P<message>.*)$", re.S)
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    502: "exchange_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raised by an endpoint to answer with a given status, code and message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    fields: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON error body every failure uses."""
    body = {"error": {"code": code, "message": message, "fields": fields or []}}
    return JSONResponse(body, status_code=status, headers=headers)


def config_fields(problems: list[str]) -> list[dict[str, Any]]:
    """`source:line: field: message` problems (as `botengine validate` prints them) as
    field entries."""
    fields: list[dict[str, Any]] = []
    for problem in problems:
        match = _PROBLEM.match(problem)
        if match is None:
            fields.append({"field": "(body)", "message": problem, "line": None})
            continue
        fields.append(
            {
                "field": match["field"],
                "message": match["message"],
                "line": int(match["line"]),
                "problem": problem,
            }
        )
    return fields


def _validation_fields(exc: RequestValidationError) -> list[dict[str, Any]]:
    fields = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        where = loc[0] if loc else "request"
        name = ".".join(loc[1:]) or where
        fields.append({"field": name, "in": where, "message": str(err.get("msg", "invalid"))})
    return fields


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.fields, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    fields = _validation_fields(exc)
    names = ", ".join(f["field"] for f in fields)
    return error_response(422, "invalid_request", f"invalid request: {names}", fields)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _config_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, BotConfigError)
    return error_response(422, "invalid_config", str(exc), config_fields(exc.problems))


async def _not_found(_: Request, exc: Exception) -> Response:
    return error_response(404, "not_found", str(exc))


async def _misconfigured(request: Request, exc: Exception) -> Response:
    log.error("api.misconfigured", path=request.url.path, error=str(exc))
    return error_response(500, "misconfigured", "the API's settings are invalid; see its logs")


async def _exchange_error(_: Request, exc: Exception) -> Response:
    # E.g. cancelling open orders on stop (`on_stop: cancel`) after the bot was stopped.
    return error_response(502, "exchange_error", f"the exchange failed: {exc}")


async def _engine_error(_: Request, exc: Exception) -> Response:
    # Lifecycle races (too many concurrent changes) and similar refusals.
    return error_response(409, "conflict", str(exc))


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("api.unavailable", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
    if isinstance(exc, BrokerUnavailableError):
        message = str(exc)  # a lifecycle command refused before it changed anything
    elif isinstance(exc, DBAPIError):
        message = "the database cannot be reached; nothing was changed"
    else:
        message = (
            "Redis or the broker cannot be reached; what the database recorded stands, and "
            "the reconciler enqueues running bots when it is back"
        )
    return error_response(503, "unavailable", message)


async def _database(request: Request, exc: Exception) -> Response:
    if is_unavailable(exc):
        return await _unavailable(request, exc)
    raise exc  # not an outage: the catch-all's generic 500


async def catch_all(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Middleware: any unexpected exception becomes a logged, generic 500."""
    try:
        return await call_next(request)
    except Exception:
        log.exception("api.internal_error", method=request.method, path=request.url.path)
        return error_response(500, "internal_error", "internal error; see the API logs")


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the same JSON shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(BotConfigError, _config_error)
    app.add_exception_handler(BotNotFoundError, _not_found)
    app.add_exception_handler(ConfigError, _misconfigured)
    app.add_exception_handler(ExchangeError, _exchange_error)
    app.add_exception_handler(BotEngineError, _engine_error)
    app.add_exception_handler(BrokerUnavailableError, _unavailable)
    app.add_exception_handler(DBAPIError, _database)
    app.add_exception_handler(redis.RedisError, _unavailable)
    app.add_exception_handler(KombuOperationalError, _unavailable)
    app.middleware("http")(catch_all)
