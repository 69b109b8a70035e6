"""From a decoded `EventIn` to the `StreamEvent` appended: the checks that need no state.

Every check the worker would otherwise dead-letter an event for, and that needs nothing but the
event, runs here before the event is accepted: who may send it, its id (or the single POST's
`Idempotency-Key`), its time against the future skew and the retention, and its properties and
value against its type (`schemas/event_checks.py`). A failure is an `ApiError` naming the field
under the item's path (`$` or `$[i]`): 403 for another user's event, else 422.

`schema_error` maps what decoding a body raised to the same error body: 422 `invalid_event`
for a type or bound msgspec refused, 400 `malformed_json` for text that is not JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec

from gateway.auth import Principal
from gateway.errors import ApiError
from gateway.ingest.ids import uuid7
from schemas.event_checks import Problem, checked_properties
from schemas.events import (
    MAX_FUTURE_SKEW_S,
    MAX_PROPERTIES_BYTES,
    EventIn,
    StreamEvent,
    split_error,
)
from schemas.settings import Settings

__all__ = ["DECODE_ERRORS", "schema_error", "to_stream_event"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
# PostgreSQL's jsonb cannot store U+0000: such properties would fail in the worker, later and
# for the whole batch, so they are refused here.
_NUL_ESCAPE: Final = b"\\u0000"

# What decoding a body may raise besides msgspec's own errors: msgspec raises RecursionError
# past its nesting limit and UnicodeDecodeError for invalid UTF-8 inside a string it decodes.
DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)


def schema_error(e: Exception, prefix: str) -> ApiError:
    """The error body for one of DECODE_ERRORS raised decoding the value at `prefix`."""
    if isinstance(e, msgspec.DecodeError):
        message, field = split_error(e, prefix)
        if isinstance(e, msgspec.ValidationError):
            return ApiError(422, "invalid_event", message, field)
        return ApiError(400, "malformed_json", message, field)
    if isinstance(e, UnicodeDecodeError):
        return ApiError(400, "malformed_json", f"invalid UTF-8 at byte {e.start}", prefix)
    return ApiError(400, "malformed_json", "JSON is nested too deeply", prefix)


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


def to_stream_event(
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
