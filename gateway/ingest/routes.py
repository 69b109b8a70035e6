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

Here: the two handlers, body decoding and the batch's per-item results. Both handlers start
with the same preamble (`intake.py`: token, query, Content-Type, backlog, body, receipt time);
an event's checks are `checks.py`, an assigned id `ids.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import orjson
from aiohttp import web
from redis.exceptions import RedisError

from gateway.errors import ApiError, error_body
from gateway.http.prom import INGEST_EVENTS
from gateway.ingest.appender import AppendStatus
from gateway.ingest.checks import DECODE_ERRORS, schema_error, to_stream_event
from gateway.ingest.intake import Intake, read_intake, redis_down
from gateway.ingest.wait import dlq_position, wait_for_fate
from gateway.keys import APPENDER, REDIS
from schemas.events import EventIn, StreamEvent, split_error

__all__ = ["routes"]

routes = web.RouteTableDef()

_JSON: Final = "application/json"
_NDJSON: Final = "application/x-ndjson"
_event_decoder: Final = msgspec.json.Decoder(EventIn)
# A valid array decodes in one call (the common case, several times cheaper); when that fails,
# items are decoded one by one from raw so one bad item does not hide the others' results.
_batch_fast_decoder: Final = msgspec.json.Decoder(list[EventIn])
_batch_decoder: Final = msgspec.json.Decoder(list[msgspec.Raw])


def _json(body: Any, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=_JSON)


async def _dlq_position(request: web.Request) -> str:
    try:
        return await dlq_position(request.app[REDIS])
    except RedisError as e:
        raise redis_down(e) from e


async def _append(request: web.Request, events: Sequence[StreamEvent]) -> list[AppendStatus]:
    try:
        return await request.app[APPENDER].append(events)
    except RedisError as e:
        raise redis_down(e) from e


def _decode_event(body: bytes) -> EventIn:
    """The single POST's body as an event; 400 if it is not one JSON object, else 422."""
    try:
        return _event_decoder.decode(body)
    except msgspec.ValidationError as e:
        if body.lstrip()[:1] != b"{":
            raise ApiError(400, "not_an_object", split_error(e)[0], "$") from None
        raise schema_error(e, "$") from None
    except DECODE_ERRORS as e:
        raise schema_error(e, "$") from None


@routes.post("/ingest/event")
async def ingest_event(request: web.Request) -> web.Response:
    intake = await read_intake(request, (_JSON,))
    try:
        event = to_stream_event(
            _decode_event(intake.body),
            "$",
            principal=intake.principal,
            settings=intake.settings,
            received_us=intake.received_us,
            idempotency_key=request.headers.get("Idempotency-Key"),
        )
    except ApiError:
        INGEST_EVENTS.labels("rejected").inc()
        raise
    timeout = intake.timeout
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
        except DECODE_ERRORS:
            items = []
        try:
            items = items or list(_batch_decoder.decode(body))
        except msgspec.ValidationError as e:
            raise ApiError(400, "not_an_array", split_error(e)[0], "$") from None
        except DECODE_ERRORS as e:
            raise schema_error(e, "$") from None
    if len(items) > max_batch:
        raise ApiError(
            413, "too_many_events", f"{len(items)} events exceed the limit of {max_batch}", "$"
        )
    if not items:
        raise ApiError(422, "empty_batch", "the batch has no events", "$")
    return items


@dataclass(slots=True)
class _Checked:
    """A batch's items once each was checked on its own, before the append."""

    # One per item, in order: a rejection is final, "accepted" waits for the append's status.
    results: list[dict[str, Any]] = field(default_factory=list)
    events: list[StreamEvent] = field(default_factory=list)  # the items that passed
    positions: list[int] = field(default_factory=list)  # index in `results` of each event


def _check_items(items: Sequence[EventIn | bytes | msgspec.Raw], intake: Intake) -> _Checked:
    checked = _Checked()
    for index, item in enumerate(items):
        path = f"$[{index}]"
        try:
            event = to_stream_event(
                item if isinstance(item, EventIn) else _event_decoder.decode(item),
                path,
                principal=intake.principal,
                settings=intake.settings,
                received_us=intake.received_us,
            )
        except DECODE_ERRORS as e:
            error = schema_error(e, path)
        except ApiError as e:
            error = e
        else:
            checked.positions.append(len(checked.results))
            checked.events.append(event)
            checked.results.append(
                {"index": index, "event_id": event.event_id, "status": "accepted"}
            )
            continue
        checked.results.append(
            {
                "index": index,
                "status": "rejected",
                "error": error_body(error.code, error.message, error.field),
            }
        )
    return checked


def _outcome(checked: _Checked, statuses: list[AppendStatus], items: int) -> dict[str, Any]:
    """The batch's answer body once appended (each item's status filled in), counted."""
    results = checked.results
    for position, status in zip(checked.positions, statuses, strict=True):
        results[position]["status"] = status
    duplicates = statuses.count("duplicate")
    INGEST_EVENTS.labels("accepted").inc(len(statuses) - duplicates)
    INGEST_EVENTS.labels("duplicate").inc(duplicates)
    INGEST_EVENTS.labels("rejected").inc(items - len(statuses))
    return {
        "accepted": len(statuses) - duplicates,
        "duplicates": duplicates,
        "rejected": items - len(statuses),
        "results": results,
    }


@routes.post("/ingest/events")
async def ingest_events(request: web.Request) -> web.Response:
    intake = await read_intake(request, (_JSON, _NDJSON))
    items = _split_batch(intake.body, intake.media, intake.settings.ingest_max_batch)
    checked = _check_items(items, intake)
    events, timeout = checked.events, intake.timeout
    dlq_from = await _dlq_position(request) if timeout is not None and events else ""
    statuses = await _append(request, events) if events else []
    body = _outcome(checked, statuses, len(items))
    if not events:
        return _json(body, 422)
    if timeout is not None:
        await wait_for_fate(request, events, statuses, timeout, dlq_from)
        return _json(body, 200)
    return _json(body, 202)
