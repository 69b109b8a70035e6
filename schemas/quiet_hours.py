"""Quiet hours: whether a rule's notifications are held at an instant, and until when. Pure
(`now` is an input; zoneinfo reads the system's tz database, nothing else).

A rule's quiet hours are `from`/`to` local times in an IANA zone (`alert_configs.quiet_hours`,
`{"from": "22:00", "to": "07:00", "timeZone": "Europe/Paris"}`); `from` after `to` spans
midnight, `from` equal to `to` is empty. They are periods of instants, not a test on the wall
clock: each local day D has one period, from the first instant the clock in the zone reads
`from` on D to the first instant it reads `to` (on D, or D+1 when it wraps). So across DST:
- a local time that does not exist (02:30 in Berlin on 2026-03-29) is reached when the clock
  jumps past it: quiet hours ending at 02:30 end at 03:00 CEST, the jump;
- a local time that repeats (02:30 in Berlin on 2026-10-25) is reached at its first
  occurrence: quiet hours ending at 02:30 end then and do not start again when the clock reads
  02:15 a second time;
- quiet hours last as many real hours as the night has (one more or one less).

Notifications of severity `critical` are never held (`held_until`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schemas.alerts import Severity

__all__ = ["QuietHours", "held_until", "in_quiet_hours", "quiet_hours_end"]

# Offsets change on whole seconds; the search for a gap's instant stops at this precision.
_RESOLUTION: Final = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A rule's quiet hours, parsed: `start` (`from`) and `end` (`to`) local times in `zone`."""

    start: time
    end: time
    zone: ZoneInfo

    @classmethod
    def parse(cls, stored: Mapping[str, Any]) -> QuietHours:
        """From the stored JSON (`from`, `to`, `timeZone`); ValueError names what is wrong."""
        try:
            zone = ZoneInfo(str(stored["timeZone"]))
        except (ZoneInfoNotFoundError, ValueError, KeyError, OSError) as e:
            raise ValueError(f"quiet hours: bad timeZone {stored.get('timeZone')!r}") from e
        try:
            return cls(
                time.fromisoformat(str(stored["from"])), time.fromisoformat(str(stored["to"])), zone
            )
        except (KeyError, ValueError) as e:
            raise ValueError(f"quiet hours: bad from/to ({e})") from e


def _first_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the clock in `zone` reads `at` or later on `day`."""
    naive = datetime.combine(day, at)
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first  # exists; fold=0 is the earlier of two occurrences
    # In a gap: fold=0 reads it with the offset before the jump (an instant after the jump),
    # fold=1 with the offset after it (an instant before). The jump is between; find it.
    low = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = first
    while high - low > _RESOLUTION:
        mid = low + (high - low) / 2
        if mid.astimezone(zone).replace(tzinfo=None) >= naive:
            high = mid
        else:
            low = mid
    return high


def _period(q: QuietHours, day: date) -> tuple[datetime, datetime]:
    end_day = day + timedelta(days=1) if q.start > q.end else day
    return _first_instant(day, q.start, q.zone), _first_instant(end_day, q.end, q.zone)


def quiet_hours_end(quiet_hours: QuietHours | None, now: datetime) -> datetime | None:
    """The UTC instant the quiet hours holding `now` (aware) end, or None outside them."""
    if quiet_hours is None or quiet_hours.start == quiet_hours.end:
        return None
    today = now.astimezone(quiet_hours.zone).date()
    for day in (today - timedelta(days=1), today):
        start, end = _period(quiet_hours, day)
        if start <= now < end:
            return end
    return None


def in_quiet_hours(quiet_hours: QuietHours | None, now: datetime) -> bool:
    """Whether `now` (aware) falls in the quiet hours."""
    return quiet_hours_end(quiet_hours, now) is not None


def held_until(
    severity: Severity, quiet_hours: QuietHours | None, now: datetime
) -> datetime | None:
    """When a notification of this severity raised at `now` may be sent: None for at once
    (critical, or outside quiet hours), else the UTC instant the quiet hours end."""
    if severity == "critical":
        return None
    return quiet_hours_end(quiet_hours, now)
