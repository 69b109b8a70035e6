"""The checks of one event that need no state: run by the gateway before it accepts an event,
and again by the worker's validate stage for what reaches a stream by other paths (a DLQ
replay, an older gateway during a rolling upgrade).

Both callers read the same answer: a `Problem` naming the field (`value`, `properties`,
`properties.followers`) and saying what is wrong, so a producer gets a 422 naming the field at
once instead of a dead letter later. What only the worker can know (the database refusing a
row) stays in the dead-letter queue.
"""

from __future__ import annotations

import math
from typing import Any, Final, NamedTuple

import orjson

from schemas.events import EVENT_TYPES

__all__ = [
    "COUNT_MAX",
    "SNAPSHOT_FIELDS",
    "Problem",
    "check_event",
    "checked_properties",
    "parse_properties",
]

# Absolute figures a profile_snapshot may carry, with their bounds.
SNAPSHOT_FIELDS: Final[dict[str, tuple[float, float]]] = {
    "profile_views": (0, 1e12),
    "connections": (0, 1e9),
    "followers": (0, 2_147_483_647),  # an integer column
    "profile_completeness": (0, 100),
}
_WHOLE_SNAPSHOT_FIELDS: Final = frozenset({"profile_views", "connections", "followers"})
_COMPLETENESS_KEYS: Final = ("profile_completeness", "completeness")
_POST_ID_MAX: Final = 128
# A count is stored in an integer column, one row per event: past it the row fails to store
# (found by a fuzzer: 2**31 was accepted, then dead-lettered by the worker).
COUNT_MAX: Final = 2_147_483_647
_EMPTY: Final[dict[str, Any]] = {}


class Problem(NamedTuple):
    """Why an event is refused: `field` is relative to the event (`properties.followers`)."""

    field: str
    message: str


def parse_properties(raw: bytes) -> dict[str, Any] | Problem:
    """The properties object, or the Problem with its JSON. orjson refuses what PostgreSQL's
    jsonb would refuse later, for the whole batch: invalid UTF-8, numbers beyond a double
    (`1e400`), nesting past 1,024 levels."""
    if raw == b"{}":  # most events: skip the parse
        return _EMPTY
    try:
        props = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return Problem("properties", f"properties are not valid JSON: {e.msg}")
    if not isinstance(props, dict):
        return Problem("properties", "properties must be a JSON object")
    return props


def checked_properties(event_type: str, value: float, raw: bytes) -> dict[str, Any] | Problem:
    """The event's properties if it passes every check, else its first Problem."""
    props = parse_properties(raw)
    if isinstance(props, Problem):
        return props
    return check_event(event_type, value, props) or props


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_event(event_type: str, value: float, props: dict[str, Any]) -> Problem | None:
    """The first Problem of an event whose properties parsed to `props`, or None."""
    if event_type not in EVENT_TYPES:
        return Problem("type", f"unknown event type {event_type!r}")
    if event_type == "profile_snapshot":
        problem = _check_snapshot(props)
        if problem:
            return problem
    elif not float(value).is_integer() or value > COUNT_MAX:
        return Problem(
            "value",
            f"value of a {event_type} event counts occurrences: a whole number to {COUNT_MAX}",
        )
    if event_type == "profile_update":
        for key in _COMPLETENESS_KEYS:
            if key in props and (not _number(props[key]) or not 0 <= props[key] <= 100):
                return Problem(f"properties.{key}", f"properties.{key} must be a number 0 to 100")
    post_id = props.get("post_id")
    if post_id is not None and (
        not isinstance(post_id, str) or not 0 < len(post_id) <= _POST_ID_MAX
    ):
        return Problem(
            "properties.post_id",
            f"properties.post_id must be a string of 1 to {_POST_ID_MAX} chars",
        )
    return None


def _check_snapshot(props: dict[str, Any]) -> Problem | None:
    present = [k for k in SNAPSHOT_FIELDS if k in props]
    if not present:
        return Problem(
            "properties", "a profile_snapshot carries none of " + ", ".join(SNAPSHOT_FIELDS)
        )
    for key in present:
        lo, hi = SNAPSHOT_FIELDS[key]
        v = props[key]
        if not _number(v) or not lo <= v <= hi:
            return Problem(
                f"properties.{key}", f"properties.{key} must be a number {lo:g} to {hi:g}"
            )
        if key in _WHOLE_SNAPSHOT_FIELDS and not float(v).is_integer():
            return Problem(f"properties.{key}", f"properties.{key} must be a whole number")
    return None
