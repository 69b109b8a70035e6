"""HTTP errors as the API promises them: `{"error": {"code", "message", "field"}}` with the status.

Handlers raise `ApiError`; `error_middleware` renders it. aiohttp raises its own
`HTTPException`s before or around our handlers: the router's 404 (no route) and 405 (wrong
method, with `Allow`), `HTTPRequestEntityTooLarge` while reading a body past
`client_max_size`, a body it could not read (bad chunking or Content-Encoding: a 400). The
middleware renders those in the same shape (keeping their headers, such as `Allow`), and an
exception no layer handled as a JSON 500 (logged with its traceback), so a client parses one
error format whatever layer refused the request.

Not covered: requests that are not valid HTTP at all (a malformed request line or header).
aiohttp's protocol layer answers those with a plain-text 400 and closes the connection before
any application code runs; no client that speaks HTTP gets one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["ApiError", "error_body", "error_middleware", "http_error"]

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request refused with `status`; `field` is a JSON path (`$[3].user_id`) or a parameter.

    `headers` travel with the response (`Retry-After`, `WWW-Authenticate`); `extra` adds
    top-level members next to `error` (the 504 of `?wait=true` lists the `pending` ids).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r}, field={self.field!r})"

    def response(self) -> web.Response:
        body = {"error": error_body(self.code, self.message, self.field), **self.extra}
        return web.json_response(body, status=self.status, headers=self.headers)


def error_body(code: str, message: str, field: str | None) -> dict[str, str]:
    """The inner `error` object; also used for per-item rejections in a batch."""
    body = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return body


# Codes for aiohttp's own refusals where the status phrase would read worse (413's phrase is
# "Request Entity Too Large"; our handlers already answer "payload_too_large").
_CODES: Final = {413: "payload_too_large"}
# Headers of an HTTPException that describe its plain-text body, not the refusal.
_BODY_HEADERS: Final = frozenset({"content-type", "content-length", "content-encoding"})


def _code(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "http_error"
    return _CODES.get(status) or "_".join(phrase.lower().replace("-", " ").split())


def http_error(request: web.Request, e: web.HTTPException) -> ApiError:
    """aiohttp's refusal as an ApiError: the same status and headers (`Allow` of a 405), a
    message that says what was refused rather than repeating the status line."""
    default_text = f"{e.status}: {e.reason}"
    message = e.text if e.text and e.text != default_text else e.reason
    field: str | None = None
    if e.status == 404:
        message = f"no route for {request.method} {request.path}"
    elif e.status == 405:
        allowed = e.headers.get("Allow", "")
        message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
    elif e.status == 413:
        field = "$"
    headers = {k: v for k, v in e.headers.items() if k.lower() not in _BODY_HEADERS}
    return ApiError(e.status, _code(e.status), message, field, headers=headers)


# The database is down, restarting (57P01 admin shutdown, 57P03 cannot connect now) or full:
# the service is unavailable, not the request wrong.
_DATABASE_DOWN: Final = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
)


def _unavailable(code: str, message: str) -> web.Response:
    return ApiError(503, code, message, headers={"Retry-After": "1"}).response()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        if e.status >= 500:
            log.warning(
                "request failed",
                extra={"path": request.path, "status": e.status, "code": e.code},
            )
        return e.response()
    except web.HTTPException as e:
        if e.status < 400:  # a redirect or an empty success raised as an exception
            raise
        return http_error(request, e).response()
    except (ConnectionResetError, BrokenPipeError):
        raise  # the client is gone: there is nobody to answer
    except Exception as e:
        if request.writer.output_size > 0:
            raise  # a response (a WebSocket upgrade) has started: aiohttp closes the connection
        return _failure(request, e)


def _failure(request: web.Request, e: Exception) -> web.Response:
    """The answer to an exception no handler turned into an ApiError."""
    if isinstance(e, RequestPayloadError):
        # The body broke while aiohttp read it (bad chunking, an undecodable Content-Encoding):
        # the client's fault, a 400, which aiohttp itself would have answered as a 500.
        reason = getattr(e.__cause__, "message", None) or "the request body could not be read"
        response = ApiError(400, "malformed_body", str(reason).strip(), "$").response()
        # The rest of the body cannot be parsed either, so the connection cannot be reused.
        response.force_close()
        return response
    if isinstance(e, TimeoutError):  # before OSError, its base class
        # aiohttp answers 504 for a handler's timeout too; keep that, in our shape.
        log.warning("request timed out", extra={"path": request.path}, exc_info=True)
        return ApiError(504, "timeout", "the request timed out").response()
    if isinstance(e, _DATABASE_DOWN):
        # A route that reached the database without its own guard: still the documented 503.
        # A refused connection (OSError) comes from the pool connecting to TimescaleDB; Redis
        # wraps its own.
        log.warning("database unavailable", extra={"path": request.path, "error": repr(e)})
        return _unavailable("database_unavailable", "TimescaleDB is unavailable")
    if isinstance(e, RedisConnectionError | RedisTimeoutError):
        log.warning("redis unavailable", extra={"path": request.path, "error": repr(e)})
        return _unavailable("redis_unavailable", "Redis is unavailable")
    # The traceback goes to the log, never to the client.
    log.error("unhandled error", extra={"path": request.path}, exc_info=e)
    return ApiError(500, "internal_error", "internal server error").response()
