"""Request ids: `X-Request-ID` taken from the request or generated, echoed in the response and
stamped on every log line written while the request is handled.

A caller's id is kept only if it is short and plain (`[A-Za-z0-9._:-]`, at most 128 chars):
anything else could forge or break log lines, so it is replaced by a fresh id rather than
refused, since a probe or a producer must not fail over a tracing header.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from schemas.logs import LOG_CONTEXT, bind_log_context

__all__ = ["HEADER", "REQUEST_ID", "middleware", "on_response_prepare", "request_id_of"]

HEADER: Final = "X-Request-ID"
_VALID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Key in the request's own mapping, so the response hook finds the id the middleware chose.
REQUEST_ID: Final = web.RequestKey("request_id", str)


def request_id_of(request: web.Request) -> str:
    """This request's id (assigned by the middleware; a fresh one if it did not run)."""
    value: str | None = request.get(REQUEST_ID)
    if value is not None:
        return value
    value = _incoming(request) or uuid.uuid4().hex
    request[REQUEST_ID] = value
    return value


def _incoming(request: web.Request) -> str | None:
    value = request.headers.get(HEADER, "").strip()
    return value if _VALID.match(value) else None


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost, so every other middleware's and the handler's log lines carry the id."""
    token = bind_log_context(request_id=request_id_of(request))
    try:
        return await handler(request)
    finally:
        LOG_CONTEXT.reset(token)


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Echo the id on every response, including those aiohttp builds itself (a 404 raised by
    the router, a 500 from an unhandled exception), which bypass the middleware's return."""
    response.headers[HEADER] = request_id_of(request)
