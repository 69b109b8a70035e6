"""What both ingest routes establish before they look at an event: the request's `Intake`.

The steps run in a fixed order, and the order is part of the contract: a request with several
faults gets the first one's error. Authentication first (401 before anything about the body),
then the query (`?wait`, `?timeout`: 400), the Content-Type (415), the backlog (429), and only
then the body is read (400 / 413 / 415 from `gateway/http/bodies.py`): under overload a 429
must cost as little as possible. The receipt time is taken once the body is in, so an event's
default time and the dedup horizon count from when the gateway had it whole.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from redis.exceptions import RedisError

from gateway.auth import Principal, authenticate
from gateway.errors import ApiError
from gateway.http.bodies import read_body
from gateway.ingest.wait import WAIT_MAX_S, WAIT_MIN_S
from gateway.keys import APPENDER, SETTINGS
from schemas.settings import Settings

__all__ = ["Intake", "read_intake", "redis_down"]

# The ingest routes' log lines keep the logger they had before this module was split from
# `routes.py`: log queries select on `logger == "gateway.ingest.routes"`.
log = logging.getLogger("gateway.ingest.routes")

_WAIT_DEFAULT_S: Final = 10.0
_RETRY_AFTER: Final = {"Retry-After": "1"}


@dataclass(frozen=True, slots=True)
class Intake:
    """A request that passed the preamble: who sent it, what it asks, its body and receipt."""

    principal: Principal
    settings: Settings
    timeout: float | None  # seconds to wait for the commit (`?wait=true`), else None
    media: str  # one of the route's allowed media types
    body: bytes  # as sent, inflated if it was encoded
    received_us: int  # Unix microseconds, once the body was read


async def read_intake(request: web.Request, allowed: Sequence[str]) -> Intake:
    """Run the preamble (module doc) in order; ApiError at the first step that refuses."""
    principal = authenticate(request)
    settings = request.app[SETTINGS]
    timeout = _wait_timeout(request)
    media = _require_media_type(request, allowed)
    # Refused before the body is read: under overload a 429 must cost as little as possible.
    await _check_backlog(request)
    body = await read_body(request, settings.ingest_max_bytes)
    received_us = time.time_ns() // 1000
    return Intake(principal, settings, timeout, media, body, received_us)


def redis_down(e: RedisError) -> ApiError:
    """The 503 for a Redis call of an ingest request that failed."""
    # Not logged per request: the appender logs each failed flush once for all its requests.
    log.debug("redis unavailable", extra={"error": repr(e)})
    return ApiError(
        503, "redis_unavailable", "the event store is unavailable", headers=_RETRY_AFTER
    )


def _require_media_type(request: web.Request, allowed: Sequence[str]) -> str:
    media = request.content_type  # application/octet-stream when the header is missing
    charset = (request.charset or "utf-8").lower()
    if media not in allowed or charset not in ("utf-8", "utf8"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected Content-Type {' or '.join(allowed)} (UTF-8), got {media}",
        )
    return media


def _wait_timeout(request: web.Request) -> float | None:
    """Seconds to wait for the commit if `?wait=true`, else None."""
    wait = request.query.get("wait", "false").lower()
    raw = request.query.get("timeout")
    if wait in ("false", "0", "no", ""):
        if raw is not None:
            raise ApiError(400, "invalid_parameter", "timeout needs wait=true", "timeout")
        return None
    if wait not in ("true", "1", "yes"):
        raise ApiError(400, "invalid_parameter", "wait must be true or false", "wait")
    try:
        timeout = _WAIT_DEFAULT_S if raw is None else float(raw)
    except ValueError:
        timeout = math.nan
    if not WAIT_MIN_S <= timeout <= WAIT_MAX_S:  # also refuses nan
        raise ApiError(
            400,
            "invalid_parameter",
            f"timeout must be seconds from {WAIT_MIN_S:g} to {WAIT_MAX_S:g}",
            "timeout",
        )
    return timeout


async def _check_backlog(request: web.Request) -> None:
    limit = request.app[SETTINGS].ingest_max_backlog
    try:
        backlog = await request.app[APPENDER].backlog()
    except RedisError as e:
        raise redis_down(e) from e
    if backlog > limit:
        raise ApiError(
            429,
            "backlog_full",
            f"{backlog} events wait for the workers (limit {limit}); retry later",
            headers=_RETRY_AFTER,
        )
