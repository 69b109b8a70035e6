"""The timestamps entries and messages carry: RFC 3339 in UTC, to the millisecond, with `Z`.

`2026-01-01T00:00:01.500Z` is what the worker writes as an update's `asOf` and `committedAt`,
what a snapshot's `asOf` and a `pong`'s `serverTime` say, and what the fan-out reads back to
measure lag. Milliseconds, not microseconds: JavaScript's `Date` keeps no more, and dashboards
parse these strings.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["epoch_ms", "iso_ms"]


def iso_ms(t: datetime) -> str:
    """`t` as `2026-01-01T00:00:01.500Z` (an aware UTC time; another offset is kept as is)."""
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_ms(stamp: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 time (`...Z`); 0 if unreadable."""
    try:
        return int(datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return 0
