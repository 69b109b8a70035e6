"""Validate: decode stream entries and apply the checks the gateway cannot do cheaply.

The gateway has checked the envelope (types, ids, time bounds, property size). Here each
event's properties are parsed and checked against its type: a snapshot must carry at least one
absolute figure of the right type, counts must be whole numbers. An event that fails becomes a
dead letter with the reason and its original bytes; the rest of its entry goes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import orjson

from pipeline.runner import DeadLetter, Delivery
from schemas.events import EVENT_TYPES, StreamEvent, stream_event_decoder

__all__ = ["SNAPSHOT_FIELDS", "ValidEvent", "validate"]

STAGE: Final = "validate"
# Absolute figures a profile_snapshot may carry, with their bounds.
SNAPSHOT_FIELDS: Final[dict[str, tuple[float, float]]] = {
    "profile_views": (0, 1e12),
    "connections": (0, 1e9),
    "followers": (0, 1e10),
    "profile_completeness": (0, 100),
}
_WHOLE_SNAPSHOT_FIELDS: Final = frozenset({"profile_views", "connections", "followers"})
_EMPTY: Final[dict[str, Any]] = {}


@dataclass(frozen=True, slots=True)
class ValidEvent:
    event: StreamEvent
    properties: dict[str, Any]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check(event: StreamEvent, props: Any) -> str | None:
    """The reason `event` is invalid, or None."""
    if event.type not in EVENT_TYPES:
        return f"unknown event type {event.type!r}"
    if not isinstance(props, dict):
        return "properties is not an object"
    if event.type != "profile_snapshot" and not float(event.value).is_integer():
        return f"value of a {event.type} event counts occurrences and must be whole"
    if event.type == "profile_snapshot":
        reason = _check_snapshot(props)
        if reason:
            return reason
    if event.type == "profile_update":
        for key in ("profile_completeness", "completeness"):
            if key in props and (not _number(props[key]) or not 0 <= props[key] <= 100):
                return f"properties.{key} must be a number from 0 to 100"
    post_id = props.get("post_id")
    if post_id is not None and (not isinstance(post_id, str) or not 0 < len(post_id) <= 128):
        return "properties.post_id must be a string of 1 to 128 characters"
    return None


def _check_snapshot(props: dict[str, Any]) -> str | None:
    present = [k for k in SNAPSHOT_FIELDS if k in props]
    if not present:
        return "profile_snapshot carries none of " + ", ".join(SNAPSHOT_FIELDS)
    for key in present:
        lo, hi = SNAPSHOT_FIELDS[key]
        v = props[key]
        if not _number(v) or not lo <= v <= hi:
            return f"properties.{key} must be a number from {lo:g} to {hi:g}"
        if key in _WHOLE_SNAPSHOT_FIELDS and not float(v).is_integer():
            return f"properties.{key} must be a whole number"
    return None


def validate(batch: list[Delivery]) -> tuple[list[ValidEvent], list[DeadLetter]]:
    valid: list[ValidEvent] = []
    dead: list[DeadLetter] = []
    for d in batch:
        for _, payload in d.fields:
            try:
                event = stream_event_decoder.decode(payload)
                # Most events carry no properties; skip the parse for them.
                props = _EMPTY if event.properties == b"{}" else orjson.loads(event.properties)
            except (msgspec.DecodeError, orjson.JSONDecodeError) as e:
                dead.append(DeadLetter(d, f"undecodable event: {e}", STAGE, payload))
                continue
            reason = _check(event, props)
            if reason is None:
                valid.append(ValidEvent(event, props))
            else:
                dead.append(DeadLetter(d, reason, STAGE, payload))
    return valid, dead
