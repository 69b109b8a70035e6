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

**`?wait=true[&timeout=s]`** (0.1 to 60 s, default 10) answers 200 with the same body once
every accepted or duplicate event is committed in TimescaleDB, 422 `dead_lettered` as soon as
the rest are committed and some were dead-lettered by a worker (with each letter's reason), or
504 `commit_timeout` listing the `pending` ids (they stay in flight); see `wait.py`.

**Checks at the gateway.** Every check that needs no state runs here, before an event is
accepted: the envelope (msgspec: types, id and user id rules, time bounds), and the properties
and value against the event's type (`schemas/event_checks.py`: JSON that PostgreSQL can store,
snapshot figures present and in range, counts whole). A failure is a 422 naming the field.
Bodies that are not JSON, nest too deeply or hold invalid UTF-8 are a 400. The workers'
dead-letter queue is left for what only they can know.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
import orjson
from aiohttp import web
from redis.exceptions import RedisError

from gateway.auth import Principal, authenticate
from gateway.errors import ApiError, error_body
from gateway.http.bodies import read_body
from gateway.http.prom import INGEST_EVENTS
from gateway.ingest.appender import AppendStatus
from gateway.ingest.wait import WAIT_MAX_S, WAIT_MIN_S, dlq_position, wait_for_fate
from gateway.keys import APPENDER, REDIS, SETTINGS
from schemas.event_checks import Problem, checked_properties
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
_WAIT_DEFAULT_S: Final = 10.0
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
    """The properties as stored, once the event passed the stateless checks the worker would
    otherwise dead-letter it for (`schemas/event_checks.py`): 422 naming the field."""
    properties = bytes(event.properties)
    if properties[:1] != b"{":
        problem = Problem("properties", "properties must be a JSON object")
    elif len(properties) > MAX_PROPERTIES_BYTES:
        problem = Problem("properties", f"properties exceed {MAX_PROPERTIES_BYTES} bytes")
    elif _NUL_ESCAPE in properties and _has_nul(properties):
        problem = Problem("properties", "properties must not contain \\u0000")
    else:
        checked = checked_properties(event.type, event.value, properties)
        if not isinstance(checked, Problem):
            return properties
        problem = checked
    code = "invalid_value" if problem.field == "value" else "invalid_properties"
    raise ApiError(422, code, problem.message, f"{path}.{problem.field}")


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


# What decoding a body may raise besides msgspec's own errors: msgspec raises RecursionError
# past its nesting limit and UnicodeDecodeError for invalid UTF-8 inside a string it decodes.
_DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)


def _schema_error(e: Exception, prefix: str) -> ApiError:
    if isinstance(e, msgspec.DecodeError):
        message, field = split_error(e, prefix)
        if isinstance(e, msgspec.ValidationError):
            return ApiError(422, "invalid_event", message, field)
        return ApiError(400, "malformed_json", message, field)
    if isinstance(e, UnicodeDecodeError):
        return ApiError(400, "malformed_json", f"invalid UTF-8 at byte {e.start}", prefix)
    return ApiError(400, "malformed_json", "JSON is nested too deeply", prefix)


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


async def _dlq_position(request: web.Request) -> str:
    try:
        return await dlq_position(request.app[REDIS])
    except RedisError as e:
        raise _redis_down(e) from e


async def _append(request: web.Request, events: Sequence[StreamEvent]) -> list[AppendStatus]:
    try:
        return await request.app[APPENDER].append(events)
    except RedisError as e:
        raise _redis_down(e) from e


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
        except _DECODE_ERRORS as e:
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
    dlq_from = await _dlq_position(request) if timeout is not None else ""
    statuses = await _append(request, [event])
    INGEST_EVENTS.labels(statuses[0]).inc()
    if timeout is not None:
        await wait_for_fate(request, [event], statuses, timeout, dlq_from)
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
        except _DECODE_ERRORS:
            items = []
        try:
            items = items or list(_batch_decoder.decode(body))
        except msgspec.ValidationError as e:
            raise ApiError(400, "not_an_array", split_error(e)[0], "$") from None
        except _DECODE_ERRORS as e:
            raise _schema_error(e, "$") from None
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
        except _DECODE_ERRORS as e:
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

    dlq_from = await _dlq_position(request) if timeout is not None and events else ""
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
        await wait_for_fate(request, events, statuses, timeout, dlq_from)
        return _json(body_out, 200)
    return _json(body_out, 202)
