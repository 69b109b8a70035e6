"""HTTP errors as the API promises them: `{"error": {"code", "message", "field"}}` with the status.

Handlers raise `ApiError`; `error_middleware` renders it. aiohttp raises its own
`HTTPRequestEntityTooLarge` while reading a body past `client_max_size`, before any handler can
check the size; the middleware renders that one in the same shape, so a producer parses one
error format whatever layer refused the request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ["ApiError", "error_body", "error_middleware"]

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
    except web.HTTPRequestEntityTooLarge as e:
        # aiohttp's text says "Maximum request body size X exceeded, actual body size Y".
        return ApiError(
            413, "payload_too_large", e.text or "request body too large", "$"
        ).response()
