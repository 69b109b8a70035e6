"""What every analytics API route shares: who may read whose data, parameters, the database,
the answer cache. The routes live beside it in metrics.py, summary.py, events.py and goals.py,
and system.py (`/api/v1/system`: operations figures, admin role only, not per user).

Access: roles `user` and `admin` (401 without a valid token, 403 for `producer`). A user reads
its own data; `?userId=` naming anyone else is a 403. An admin reads any user's data with
`?userId=` (default: the token's own subject).

Errors are ApiError's JSON shape; a query parameter's error names the parameter in `field`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import asyncpg
import msgspec
import orjson
from aiohttp import web

from gateway.api.cache import ApiCache
from gateway.auth import Principal, require_role
from gateway.errors import ApiError
from gateway.keys import DB_POOL, REDIS, SETTINGS
from schemas.events import is_user_id, split_error
from sinks.db import Conn

__all__ = [
    "API",
    "align_down",
    "align_up",
    "cached",
    "decode_body",
    "connection",
    "dumps",
    "json_body",
    "json_response",
    "parse_int",
    "parse_time",
    "reader",
    "span_text",
    "time_range",
]

log = logging.getLogger(__name__)

API: Final = "/api/v1"
# Bodies the API decodes are a goal or a rule: a few hundred bytes; 16 KiB leaves room and
# bounds what a client can make the gateway read.
BODY_LIMIT: Final = 16_384
T = TypeVar("T")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# A query string decodes `+` as a space, so `...T10:00:00+02:00` arrives as `... 02:00`.
_SPACED_OFFSET: Final = re.compile(r"^(.*\d) (\d\d(?::?\d\d)?)$")
# Bounds one request's database work; a query past it answers 503 instead of holding a
# connection the pool's other requests are waiting for.
QUERY_TIMEOUT_S: Final = 10.0
_RETRY_AFTER: Final = {"Retry-After": "5"}
# Every API query names its time range with parameters, and only a plan made for their values
# lets PostgreSQL skip the chunks outside it. asyncpg prepares statements, and after five runs
# PostgreSQL may switch a statement to a generic plan that covers every chunk of the table
# (over 1,400 after 90 days): the event feed went from 2 ms to 30-60 ms per page that way. The
# pool's reset on release undoes the setting, hence once per checkout.
_CUSTOM_PLANS: Final = "SET plan_cache_mode = force_custom_plan"
# Part of every cache key: bump it when an answer's shape changes, so a deploy never serves
# entries in the old shape.
_CACHE_FORMAT: Final = "v1:"
# Connection-level failures: the database is down or overloaded, not the request wrong.
_DB_DOWN: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # the server is shutting down or starting up
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,
)


def reader(request: web.Request) -> tuple[Principal, str]:
    """The principal and the user whose data the request reads or writes."""
    principal = require_role(request, "user", "admin")
    wanted = request.query.get("userId")
    if wanted is None:
        if principal.role == "admin" and not is_user_id(principal.subject):
            raise ApiError(400, "invalid_parameter", "userId is required", "userId")
        return principal, principal.subject
    if not is_user_id(wanted):
        raise ApiError(
            400, "invalid_parameter", "userId must be 1-64 chars of [A-Za-z0-9_.:-]", "userId"
        )
    if principal.role != "admin" and wanted != principal.subject:
        raise ApiError(403, "forbidden", "a user token may only read its own data", "userId")
    return principal, wanted


def parse_time(request: web.Request, name: str) -> datetime | None:
    """An RFC 3339 timestamp with a zone from query parameter `name`, in UTC; None if absent."""
    raw = request.query.get(name)
    if raw is None:
        return None
    text = _SPACED_OFFSET.sub(r"\1+\2", raw.strip())
    try:
        value = datetime.fromisoformat(text)
        if value.tzinfo is not None:
            return value.astimezone(UTC)
        problem = "needs a zone (Z or +hh:mm)"
    except (ValueError, OverflowError):
        problem = "is not an RFC 3339 timestamp"
    raise ApiError(400, "invalid_parameter", f"{name} {problem}, e.g. 2025-01-31T12:00:00Z", name)


def parse_int(request: web.Request, name: str, *, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer {lo}-{hi}", name)
    return value


def align_down(t: datetime, width: timedelta) -> datetime:
    """The start of t's bucket, as time_bucket computes it for widths that divide a day."""
    return _EPOCH + ((t - _EPOCH) // width) * width


def align_up(t: datetime, width: timedelta) -> datetime:
    start = align_down(t, width)
    return start if start == t else start + width


def span_text(span: timedelta) -> str:
    if span % timedelta(days=1) == timedelta(0):
        return f"{span.days} days"
    return f"{span.total_seconds() / 3600:g} hours"


def time_range(
    request: web.Request,
    now: datetime,
    *,
    default_span: timedelta,
    max_span: timedelta,
    width: timedelta,
    bucket: str | None = None,
) -> tuple[datetime, datetime]:
    """`[start, end)` of `from` and `to` (default: `default_span` up to `now`), aligned out to
    `width`; a 400 naming `from` or `to` for a reversed, too long or uncomputable range."""
    to = parse_time(request, "to") or now
    since = parse_time(request, "from")
    try:
        since = since or to - min(default_span, max_span)
        start, end = align_down(since, width), align_up(to, width)
    except OverflowError:
        # Python's datetime ends at years 1 and 9999: a default span or a bucket past them.
        raise ApiError(400, "invalid_parameter", "to is out of range", "to") from None
    if since >= to:
        raise ApiError(400, "invalid_parameter", "from must be before to", "from")
    if to - since > max_span:
        why = f"; the most {bucket} buckets span" if bucket else ""
        message = f"from is more than {span_text(max_span)} before to{why}"
        raise ApiError(400, "invalid_parameter", message, "from")
    return start, end


def dumps(body: Any) -> bytes:
    """JSON as the API writes it: datetimes as RFC 3339 in UTC with `Z`."""
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=body if isinstance(body, bytes) else dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
    )


@asynccontextmanager
async def connection(request: web.Request) -> AsyncIterator[Conn]:
    """A pooled connection for at most QUERY_TIMEOUT_S; an unreachable database is a 503."""
    try:
        async with asyncio.timeout(QUERY_TIMEOUT_S):
            pool = await request.app[DB_POOL]()
            async with pool.acquire() as conn:
                await conn.execute(_CUSTOM_PLANS)
                yield conn
    except _DB_DOWN as e:
        log.warning("api query failed", extra={"path": request.path, "error": repr(e)})
        raise ApiError(
            503, "database_unavailable", "TimescaleDB is unavailable", headers=_RETRY_AFTER
        ) from e


async def cached(
    request: web.Request, user_id: str, what: str, compute: Callable[[], Awaitable[Any]]
) -> web.Response:
    """The cached answer for (user, what), or `compute()`'s, stored for API_CACHE_TTL.

    `what` must name the endpoint and every parameter the answer depends on, normalized (so
    equivalent requests share an entry); `X-Cache` says hit, miss or error.
    """
    cache = ApiCache(request.app[REDIS], request.app[SETTINGS].api_cache_ttl)
    if not cache.enabled:
        return json_response(await compute())
    key = _CACHE_FORMAT + what
    found = await cache.lookup(user_id, key)
    if found.body is not None:
        return json_response(found.body, headers={"X-Cache": "hit"})
    body = dumps(await compute())
    if found.generation is not None:
        await cache.store(user_id, key, found.generation, body)
    return json_response(body, headers={"X-Cache": found.result})


async def json_body(request: web.Request, limit: int = BODY_LIMIT) -> bytes:
    """The JSON body of a write: 415 for another media type, 413 past `limit` bytes."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "expected Content-Type application/json")
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"body exceeds {limit} bytes", "$")
    body = await request.read()
    if len(body) > limit:
        raise ApiError(413, "payload_too_large", f"body exceeds {limit} bytes", "$")
    return body


def decode_body(
    decoder: msgspec.json.Decoder[T], body: bytes, invalid: str, prefix: str = "$"
) -> T:
    """`body` decoded; a 422 `invalid` naming the field, or a 400 for JSON that is malformed."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        message, field = split_error(e, prefix)
        raise ApiError(422, invalid, message, field) from None
    except msgspec.DecodeError as e:
        message, field = split_error(e, prefix)
        raise ApiError(400, "malformed_json", message, field) from None
