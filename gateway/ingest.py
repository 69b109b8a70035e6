"""`POST /ingest/event` and `POST /ingest/events`: validate, deduplicate, append to the streams.

A batch is a JSON array, or NDJSON (`Content-Type: application/x-ndjson`, one event per line;
blank lines are ignored and `index` counts events, not lines). At most INGEST_MAX_BATCH events
and INGEST_MAX_BYTES bytes; past either the whole request is refused with 413.

**Partial batches.** Items are independent: every valid item is appended, and every invalid one
is listed in `results` with its error (`field` re-rooted at `$[i]`, e.g. `$[3].user_id`), so a
producer always learns the fate of each item and never sees a batch half-accepted in silence.
The answer is 202 if at least one item was accepted or a duplicate, else 422 with the same
per-item body. A whole-request problem (malformed JSON array, not an array, too large, bad
token, backlog full) refuses every item and appends nothing. In NDJSON a malformed line is one
rejected item, since lines do not depend on each other.

**Identity.** `event_id` is the producer's, or the `Idempotency-Key` header of a single POST,
else a time-ordered UUIDv7 assigned here. An id seen in the dedup window answers `duplicate` and
is not appended again: retrying a request is always safe.

**`?wait=true[&timeout=s]`** answers 200 with the same body only once every accepted or
duplicate event is committed in TimescaleDB, or 504 `commit_timeout` listing the `pending` ids
(they stay in flight and will be stored).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import msgspec
import orjson
from aiohttp import web
from redis.exceptions import RedisError

from gateway.appender import AppendStatus
from gateway.auth import Principal, authenticate
from gateway.bodies import read_body
from gateway.errors import ApiError, error_body
from gateway.keys import APPENDER, DB_POOL, SETTINGS
from gateway.metrics import INGEST_EVENTS
from schemas.events import (
    MAX_FUTURE_SKEW_S,
    MAX_PROPERTIES_BYTES,
    EventIn,
    StreamEvent,
    split_error,
)
from schemas.settings import Settings

__all__ = ["routes", "uuid7"]

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

_JSON: Final = "application/json"
_NDJSON: Final = "application/x-ndjson"
_event_decoder: Final = msgspec.json.Decoder(EventIn)
# A valid array decodes in one call (the common case, several times cheaper); when that fails,
# items are decoded one by one from raw so one bad item does not hide the others' results.
_batch_fast_decoder: Final = msgspec.json.Decoder(list[EventIn])
_batch_decoder: Final = msgspec.json.Decoder(list[msgspec.Raw])

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
# Commit polling: often enough to add little latency, rarely enough to cost the DB little.
_POLL_S: Final = 0.025
_WAIT_DEFAULT_S: Final = 10.0
_WAIT_MAX_S: Final = 60.0
_RETRY_AFTER: Final = {"Retry-After": "1"}
# PostgreSQL's jsonb cannot store U+0000: such properties would fail in the worker, later and
# for the whole batch, so they are refused here.
_NUL_ESCAPE: Final = b"\\u0000"

# UUIDv7 (RFC 9562): 48-bit Unix ms | version 7 | 12 random | variant 0b10 | 62 random.
_MS_MASK: Final = (1 << 48) - 1
_VERSION_VARIANT_MASK: Final = (0xF << 76) | (0x3 << 62)
_VERSION_VARIANT: Final = (0x7 << 76) | (0x2 << 62)


def uuid7(unix_ms: int | None = None) -> str:
    """A UUIDv7 string: ids assigned later sort later (to the millisecond) and index well."""
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    # Ids need uniqueness, not secrecy: 74 random bits per millisecond make a collision
    # negligible, and getrandbits costs a tenth of os.urandom's syscall. `random` reseeds
    # itself in forked children, so worker processes do not share a sequence.
    value = (ms & _MS_MASK) << 80 | random.getrandbits(80)
    h = f"{value & ~_VERSION_VARIANT_MASK | _VERSION_VARIANT:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _json(body: Any, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=_JSON)


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
    if wait in ("false", "0", "no", ""):
        return None
    if wait not in ("true", "1", "yes"):
        raise ApiError(400, "invalid_parameter", "wait must be true or false", "wait")
    raw = request.query.get("timeout")
    try:
        timeout = _WAIT_DEFAULT_S if raw is None else float(raw)
    except ValueError:
        timeout = math.nan
    if not 0 < timeout <= _WAIT_MAX_S:  # also refuses nan
        raise ApiError(
            400, "invalid_parameter", f"timeout must be seconds in (0, {_WAIT_MAX_S:g}]", "timeout"
        )
    return timeout


def _has_nul(raw: bytes) -> bool:
    """True if the JSON text escapes U+0000 (after an odd run of backslashes it is literal)."""
    start = raw.find(_NUL_ESCAPE)
    while start != -1:
        run = 0
        while start - run - 1 >= 0 and raw[start - run - 1] == 0x5C:
            run += 1
        if run % 2 == 0:
            return True
        start = raw.find(_NUL_ESCAPE, start + 1)
    return False


def _event_id(event: EventIn, path: str, idempotency_key: str | None) -> str | None:
    if idempotency_key is None:
        return event.event_id
    field = f"{path}.event_id"
    if not 0 < len(idempotency_key) <= 128:
        raise ApiError(422, "invalid_event_id", "Idempotency-Key must be 1 to 128 chars", field)
    if event.event_id is not None and event.event_id != idempotency_key:
        raise ApiError(422, "invalid_event_id", "event_id differs from Idempotency-Key", field)
    return idempotency_key


def _time_us(event: EventIn, path: str, received_us: int, retention_days: int) -> int:
    if event.time is None:
        return received_us
    time_us: int = (event.time - _EPOCH) // _US
    if time_us > received_us + int(MAX_FUTURE_SKEW_S * 1e6):
        problem = f"time is more than {MAX_FUTURE_SKEW_S:g} s in the future"
    elif time_us < received_us - retention_days * 86_400_000_000:
        problem = f"time is older than the {retention_days}-day retention"
    else:
        return time_us
    raise ApiError(422, "invalid_time", problem, f"{path}.time")


def _properties(event: EventIn, path: str) -> bytes:
    properties = bytes(event.properties)
    if properties[:1] != b"{":
        problem = "properties must be a JSON object"
    elif len(properties) > MAX_PROPERTIES_BYTES:
        problem = f"properties exceed {MAX_PROPERTIES_BYTES} bytes"
    elif _NUL_ESCAPE in properties and _has_nul(properties):
        problem = "properties must not contain \\u0000"
    else:
        return properties
    raise ApiError(422, "invalid_properties", problem, f"{path}.properties")


def _to_stream_event(
    event: EventIn,
    path: str,
    *,
    principal: Principal,
    settings: Settings,
    received_us: int,
    idempotency_key: str | None = None,
) -> StreamEvent:
    """The event as appended, or ApiError (403 / 422) naming the field under `path`."""
    if not principal.may_send_for(event.user_id):
        raise ApiError(
            403, "forbidden", "a user token may only send its own events", f"{path}.user_id"
        )
    event_id = _event_id(event, path, idempotency_key)
    return StreamEvent(
        event_id=event_id or uuid7(received_us // 1000),
        user_id=event.user_id,
        type=event.type,
        time_us=_time_us(event, path, received_us, settings.retention_days),
        value=event.value,
        properties=_properties(event, path),
        received_us=received_us,
    )


def _schema_error(e: msgspec.DecodeError, prefix: str) -> ApiError:
    message, field = split_error(e, prefix)
    if isinstance(e, msgspec.ValidationError):
        return ApiError(422, "invalid_event", message, field)
    return ApiError(400, "malformed_json", message, field)


async def _check_backlog(request: web.Request) -> None:
    limit = request.app[SETTINGS].ingest_max_backlog
    try:
        backlog = await request.app[APPENDER].backlog()
    except RedisError as e:
        raise _redis_down(e) from e
    if backlog > limit:
        raise ApiError(
            429,
            "backlog_full",
            f"{backlog} events wait for the workers (limit {limit}); retry later",
            headers=_RETRY_AFTER,
        )


def _redis_down(e: RedisError) -> ApiError:
    # Not logged per request: the appender logs each failed flush once for all its requests.
    log.debug("redis unavailable", extra={"error": repr(e)})
    return ApiError(
        503, "redis_unavailable", "the event store is unavailable", headers=_RETRY_AFTER
    )


async def _append(request: web.Request, events: Sequence[StreamEvent]) -> list[AppendStatus]:
    try:
        return await request.app[APPENDER].append(events)
    except RedisError as e:
        raise _redis_down(e) from e


_COMMITTED_SQL: Final = """
SELECT user_id, event_id FROM real_time_events
WHERE (user_id, event_id) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND time >= $3
"""


async def _wait_committed(
    request: web.Request,
    events: Sequence[StreamEvent],
    statuses: Sequence[AppendStatus],
    wait_s: float,
) -> None:
    """Return once every event is in real_time_events; ApiError(504) listing the rest."""
    horizon_us = int(request.app[APPENDER].remembered_s * 1e6)
    pending: dict[tuple[str, str], int] = {}
    for event, status in zip(events, statuses, strict=True):
        # A duplicate whose time defaulted to this receipt was stored with its first receipt
        # time, which dedup remembered for at most `remembered_s`.
        defaulted = status == "duplicate" and event.time_us == event.received_us
        bound = event.time_us - horizon_us if defaulted else event.time_us
        key = (event.user_id, event.event_id)
        pending[key] = min(bound, pending.get(key, bound))
    try:
        async with asyncio.timeout(wait_s):
            pool = await request.app[DB_POOL]()
            while True:
                users, ids = zip(*pending, strict=True)
                since = _EPOCH + timedelta(microseconds=min(pending.values()))
                for row in await pool.fetch(_COMMITTED_SQL, list(users), list(ids), since):
                    pending.pop((row["user_id"], row["event_id"]), None)
                if not pending:
                    return
                await asyncio.sleep(_POLL_S)
    except TimeoutError:
        raise ApiError(
            504,
            "commit_timeout",
            f"{len(pending)} events not committed within {wait_s:g} s; they remain in flight",
            extra={"pending": list(dict.fromkeys(event_id for _, event_id in pending))},
        ) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        log.warning("database unavailable", extra={"error": repr(e)})
        raise ApiError(
            503,
            "database_unavailable",
            "cannot confirm commits: TimescaleDB unreachable; the events were accepted",
            headers=_RETRY_AFTER,
        ) from e


@routes.post("/ingest/event")
async def ingest_event(request: web.Request) -> web.Response:
    principal = authenticate(request)
    settings = request.app[SETTINGS]
    timeout = _wait_timeout(request)
    _require_media_type(request, (_JSON,))
    # Refused before the body is read: under overload a 429 must cost as little as possible.
    await _check_backlog(request)
    body = await read_body(request, settings.ingest_max_bytes)
    received_us = time.time_ns() // 1000
    try:
        try:
            event_in = _event_decoder.decode(body)
        except msgspec.ValidationError as e:
            if body.lstrip()[:1] != b"{":
                raise ApiError(400, "not_an_object", split_error(e)[0], "$") from None
            raise _schema_error(e, "$") from None
        except msgspec.DecodeError as e:
            raise _schema_error(e, "$") from None
        event = _to_stream_event(
            event_in,
            "$",
            principal=principal,
            settings=settings,
            received_us=received_us,
            idempotency_key=request.headers.get("Idempotency-Key"),
        )
    except ApiError:
        INGEST_EVENTS.labels("rejected").inc()
        raise
    statuses = await _append(request, [event])
    INGEST_EVENTS.labels(statuses[0]).inc()
    if timeout is not None:
        await _wait_committed(request, [event], statuses, timeout)
    return _json(
        {"event_id": event.event_id, "status": statuses[0]}, 202 if timeout is None else 200
    )


def _split_batch(body: bytes, media: str, max_batch: int) -> list[EventIn | bytes | msgspec.Raw]:
    items: list[EventIn | bytes | msgspec.Raw]
    if media == _NDJSON:
        items = [line for line in body.split(b"\n") if line.strip()]
    else:
        try:
            items = list(_batch_fast_decoder.decode(body))
        except msgspec.DecodeError:
            items = []
        try:
            items = items or list(_batch_decoder.decode(body))
        except msgspec.ValidationError as e:
            raise ApiError(400, "not_an_array", split_error(e)[0], "$") from None
        except msgspec.DecodeError as e:
            raise ApiError(400, "malformed_json", split_error(e)[0], "$") from None
    if len(items) > max_batch:
        raise ApiError(
            413, "too_many_events", f"{len(items)} events exceed the limit of {max_batch}", "$"
        )
    if not items:
        raise ApiError(422, "empty_batch", "the batch has no events", "$")
    return items


@routes.post("/ingest/events")
async def ingest_events(request: web.Request) -> web.Response:
    principal = authenticate(request)
    settings = request.app[SETTINGS]
    timeout = _wait_timeout(request)
    media = _require_media_type(request, (_JSON, _NDJSON))
    await _check_backlog(request)
    body = await read_body(request, settings.ingest_max_bytes)
    received_us = time.time_ns() // 1000
    items = _split_batch(body, media, settings.ingest_max_batch)

    results: list[dict[str, Any]] = []
    events: list[StreamEvent] = []
    positions: list[int] = []  # index in `results` of each appended event
    for index, item in enumerate(items):
        path = f"$[{index}]"
        try:
            event = _to_stream_event(
                item if isinstance(item, EventIn) else _event_decoder.decode(item),
                path,
                principal=principal,
                settings=settings,
                received_us=received_us,
            )
        except msgspec.DecodeError as e:
            error = _schema_error(e, path)
        except ApiError as e:
            error = e
        else:
            positions.append(len(results))
            events.append(event)
            results.append({"index": index, "event_id": event.event_id, "status": "accepted"})
            continue
        results.append(
            {
                "index": index,
                "status": "rejected",
                "error": error_body(error.code, error.message, error.field),
            }
        )

    statuses = await _append(request, events) if events else []
    for position, status in zip(positions, statuses, strict=True):
        results[position]["status"] = status
    duplicates = statuses.count("duplicate")
    INGEST_EVENTS.labels("accepted").inc(len(statuses) - duplicates)
    INGEST_EVENTS.labels("duplicate").inc(duplicates)
    INGEST_EVENTS.labels("rejected").inc(len(items) - len(statuses))
    body_out = {
        "accepted": len(statuses) - duplicates,
        "duplicates": duplicates,
        "rejected": len(items) - len(statuses),
        "results": results,
    }
    if not events:
        return _json(body_out, 422)
    if timeout is not None:
        await _wait_committed(request, events, statuses, timeout)
        return _json(body_out, 200)
    return _json(body_out, 202)
