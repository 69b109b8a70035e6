"""Store: turn valid events into table rows and write them in one transaction per batch.

Mapping (documented in README, "Event contract"):
- every event              -> real_time_events
- profile_view, search_appearance, connection_added, connection_removed, message_received
                           -> profile_metrics, `value` in the matching increment column
- profile_update           -> profile_metrics, profile_completeness from properties if given
- profile_snapshot         -> profile_metrics, absolute total_profile_views, connections,
                              followers, profile_completeness from properties
- post_published, post_impression, post_like, post_comment, post_share
                           -> engagement_metrics, `value` in posts_published, impressions,
                              likes, comments or shares; post_id from properties
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from pipeline.stages.validate import ValidEvent

__all__ = ["ENGAGEMENT_COLUMN", "PROFILE_COLUMN", "rows_for", "to_datetime"]

PROFILE_COLUMN: Final = {
    "profile_view": 4,
    "search_appearance": 5,
    "connection_added": 6,
    "connection_removed": 7,
    "message_received": 8,
}
ENGAGEMENT_COLUMN: Final = {
    "post_published": 5,
    "post_impression": 6,
    "post_like": 7,
    "post_comment": 8,
    "post_share": 9,
}


def to_datetime(us: int) -> datetime:
    """Exact for every microsecond from 1970 to 2100: a float's error at these magnitudes is
    under 0.25 us and fromtimestamp rounds to the nearest microsecond (checked on 2M values);
    twice as fast as adding a timedelta, and this runs twice per stored event."""
    return datetime.fromtimestamp(us / 1_000_000, UTC)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def rows_for(
    events: list[ValidEvent], scores: dict[str, float]
) -> dict[str, list[tuple[Any, ...]]]:
    """Records per table in sinks.timescale.TABLE_COLUMNS order."""
    profile: list[tuple[Any, ...]] = []
    engagement: list[tuple[Any, ...]] = []
    feed: list[tuple[Any, ...]] = []
    # Events of one request share their receipt time: convert each distinct one once.
    received: dict[int, datetime] = {}
    for v in events:
        e = v.event
        t = to_datetime(e.time_us)
        got = received.get(e.received_us)
        if got is None:
            got = received[e.received_us] = to_datetime(e.received_us)
        feed.append((t, e.user_id, e.event_id, e.type, e.value, e.properties.decode(), got))
        head = (t, e.user_id, e.event_id, e.type)
        score = scores.get(e.user_id)
        if e.type in PROFILE_COLUMN:
            counts = [0, 0, 0, 0, 0]
            counts[PROFILE_COLUMN[e.type] - 4] = int(e.value)
            profile.append((*head, *counts, None, None, None, None, score))
        elif e.type in ("profile_snapshot", "profile_update"):
            p = v.properties
            completeness = _opt_float(p.get("profile_completeness", p.get("completeness")))
            if e.type == "profile_snapshot":
                absolute = (
                    _opt_int(p.get("profile_views")),
                    _opt_int(p.get("connections")),
                    _opt_int(p.get("followers")),
                    completeness,
                )
            else:
                absolute = (None, None, None, completeness)
            profile.append((*head, 0, 0, 0, 0, 0, *absolute, score))
        elif e.type in ENGAGEMENT_COLUMN:
            counts = [0, 0, 0, 0, 0]
            counts[ENGAGEMENT_COLUMN[e.type] - 5] = int(e.value)
            post_id = v.properties.get("post_id")
            engagement.append((*head, post_id, *counts))
    return {"profile_metrics": profile, "engagement_metrics": engagement, "real_time_events": feed}
