"""The dead-letter entry in `ia:dlq`: written by the workers' runner, read by the admin API
(list, replay) and by the ingest `?wait=true` path, which answers 422 as soon as one of its
events is dead-lettered.

One entry is one letter: the metadata fields below, then either `payload` (the one event a
stage refused, as its msgpack `StreamEvent`) or, when a whole stream entry failed, the entry's
own fields renamed `f<i>:<event id>` so they keep their order and stay apart from the metadata.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from schemas.events import stream_event_decoder

__all__ = [
    "LETTER_META",
    "LetterEvent",
    "letter_events",
    "letter_fields",
    "parse_stream_id",
    "text",
]

LETTER_META: Final = (
    "stream",
    "entry_id",
    "group",
    "stage",
    "reason",
    "deliveries",
    "failed_at_ms",
)
# A reason is a message for an operator, not a dump: bounded so one letter stays small.
REASON_MAX: Final = 2000
_STREAM_ID: Final = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)
_U64_MAX: Final = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class LetterEvent:
    """One event a letter holds; `user_id` and `type` are None when its bytes do not decode."""

    event_id: str | None
    user_id: str | None
    type: str | None
    payload: bytes


def text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def parse_stream_id(raw: str) -> tuple[int, int] | None:
    """(ms, seq) of a stream id such as `1700000000000-0`, or None: ASCII digits only, each
    part within 64 bits, so a malformed id is the caller's error and never reaches Redis."""
    match = _STREAM_ID.fullmatch(raw)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    return (ms, seq) if ms <= _U64_MAX and seq <= _U64_MAX else None


def letter_fields(
    *,
    stream: str,
    entry_id: str,
    group: str,
    stage: str,
    reason: str,
    deliveries: int,
    failed_at_ms: int,
    payload: bytes,
    entry: Sequence[tuple[bytes | str, bytes]],
) -> dict[Any, Any]:
    """The fields of a letter: `payload` set for one event, else the whole `entry`."""
    fields: dict[Any, Any] = {
        "stream": stream,
        "entry_id": entry_id,
        "group": group,
        "stage": stage,
        "reason": reason[:REASON_MAX],
        "deliveries": deliveries,
        "failed_at_ms": failed_at_ms,
    }
    if payload:
        fields["payload"] = payload
    else:
        for i, (key, value) in enumerate(entry):
            fields[f"f{i}:{text(key)}"] = value
    return fields


def letter_events(fields: dict[bytes, bytes]) -> list[LetterEvent]:
    """The events a letter holds, in order."""
    raw: list[tuple[str | None, bytes]]
    if b"payload" in fields:
        raw = [(None, fields[b"payload"])]
    else:
        raw = [
            (text(key).partition(":")[2], value)
            for key, value in fields.items()
            if key[:1] == b"f" and b":" in key
        ]
    out: list[LetterEvent] = []
    for event_id, payload in raw:
        try:
            e = stream_event_decoder.decode(payload)
        except msgspec.DecodeError:
            out.append(LetterEvent(event_id, None, None, payload))
        else:
            out.append(LetterEvent(e.event_id, e.user_id, e.type, payload))
    return out
