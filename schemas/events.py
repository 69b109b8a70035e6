"""The event contract: what producers POST, and what travels through the streams.

`EventIn` is decoded at the gateway from JSON with msgspec, so a producer reads msgspec's
own error path (`Expected int, got str - at $.value`) in the 400. `StreamEvent` is the
compact msgpack form the gateway appends and the workers decode: an array, not a map, since
field names repeated in every event would double the stream's memory.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Final, Literal, get_args

import msgspec

__all__ = [
    "EVENT_ID_PATTERN",
    "EVENT_TYPES",
    "MAX_FUTURE_SKEW_S",
    "MAX_PROPERTIES_BYTES",
    "EventIn",
    "USER_ID_MAX_LENGTH",
    "USER_ID_PATTERN",
    "EventType",
    "StreamEvent",
    "UserId",
    "is_user_id",
    "split_error",
    "stream_event_decoder",
    "stream_event_encoder",
]

EventType = Literal[
    "profile_view",
    "search_appearance",
    "connection_added",
    "connection_removed",
    "post_published",
    "post_impression",
    "post_like",
    "post_comment",
    "post_share",
    "profile_update",
    "message_received",
    "profile_snapshot",
]
EVENT_TYPES: Final[frozenset[str]] = frozenset(get_args(EventType))

# Producers' clocks drift; beyond five minutes a future time is a bug, not skew.
MAX_FUTURE_SKEW_S: Final = 300.0
# Properties are context for the feed, not a document store; 8 KiB keeps one stream entry of
# a 1000-event batch under ~10 MiB even in the worst case.
MAX_PROPERTIES_BYTES: Final = 8192

# The one rule for a user id: an event's `user_id`, a `user` token's `sub`, `?userId=`. Short,
# and only characters safe in Redis keys (no braces, which would change a key's hash tag),
# file paths and log lines. `\Z`, not `$`: `$` also matches before a trailing newline.
USER_ID_MAX_LENGTH: Final = 64
USER_ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]+\Z"
_USER_ID: Final = re.compile(USER_ID_PATTERN)
UserId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=USER_ID_MAX_LENGTH, pattern=USER_ID_PATTERN)
]


def is_user_id(value: str) -> bool:
    """Whether `value` is a valid user id (the rule `UserId` applies when decoding)."""
    return len(value) <= USER_ID_MAX_LENGTH and _USER_ID.match(value) is not None


# Any printable text: control characters (U+0000 above all, which PostgreSQL's text cannot
# hold) would fail the row in the worker, later and for its whole batch.
EVENT_ID_PATTERN: Final = r"^[^\x00-\x1f\x7f]+\Z"
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=EVENT_ID_PATTERN)]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
# Increments are counts; a negative one would silently corrupt every sum downstream.
Value = Annotated[float, msgspec.Meta(ge=0, le=1e12)]


class EventIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One event as a producer sends it. Unknown fields are refused so typos surface at once."""

    # The descriptions and the `properties` object type are published in /openapi.json
    # (gateway/ops/openapi_bodies.py); they state checks the gateway makes after decoding.
    user_id: Annotated[UserId, msgspec.Meta(description="a user token may send only its own")]
    type: EventType
    event_id: Annotated[
        EventId | None,
        msgspec.Meta(description="deduplicates retries; default: Idempotency-Key, else a UUIDv7"),
    ] = None
    time: Annotated[
        AwareTime | None,
        msgspec.Meta(
            description=f"at most {MAX_FUTURE_SKEW_S:g} s ahead of the gateway's clock, at most "
            "RETENTION_DAYS behind it; default: when the gateway received it"
        ),
    ] = None
    value: Value = 1.0
    # Kept as raw JSON: it is stored as jsonb unchanged, so decoding it here would be wasted.
    properties: Annotated[
        msgspec.Raw,
        msgspec.Meta(
            description=f"at most {MAX_PROPERTIES_BYTES} bytes of JSON, without \\u0000",
            extra_json_schema={"type": "object"},
        ),
    ] = msgspec.Raw(b"{}")


class StreamEvent(msgspec.Struct, frozen=True, array_like=True):
    """One accepted event in a stream entry. Times are integer microseconds since the epoch."""

    event_id: str
    user_id: str
    type: str
    time_us: int
    value: float
    properties: bytes  # JSON text of an object, at most MAX_PROPERTIES_BYTES
    received_us: int


stream_event_encoder: Final = msgspec.msgpack.Encoder()
stream_event_decoder: Final = msgspec.msgpack.Decoder(StreamEvent)

_AT = re.compile(r"^(?P<message>.*?)(?: - at `(?P<path>[^`]+)`)?$", re.DOTALL)
_MISSING = re.compile(r"missing required field `(?P<name>[^`]+)`")
_UNKNOWN = re.compile(r"unknown field `(?P<name>[^`]+)`")


def split_error(
    error: msgspec.DecodeError | msgspec.ValidationError, prefix: str = "$"
) -> tuple[str, str]:
    """(message, field path) from a msgspec error; `prefix` re-roots the path (`$[3]` in a batch).

    A missing or unknown field is reported at its parent; the path here names the field itself.
    """
    text = str(error)
    match = _AT.match(text)
    message = match.group("message") if match else text
    path = (match.group("path") if match else None) or "$"
    named = _MISSING.search(message) or _UNKNOWN.search(message)
    if named:
        path = f"{path}.{named.group('name')}"
    return message, prefix + path[1:]
