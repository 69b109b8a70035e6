"""The shapes of the tables events land in and of their rollups, as the code addresses them.

The worker builds records in these column orders (pipeline/stages/rows.py) and COPYs them
(sinks/timescale.py); the rollups are recomputed over these columns (sinks/rollups.py), and the
API and the snapshots read them back (sinks/queries/, gateway/api/metrics.py). The tables
themselves are created by migrations/0001_event_hypertables.up.sql and 0004_rollups.up.sql,
which are checksummed once applied and so keep their own spelling; these tuples follow them.

A record is built block by block, each block a tuple below, so a position is always derived
from a column name (`PROFILE_COUNTS.index(...)`) and never written as a number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "ENGAGEMENT_COUNTS",
    "ENGAGEMENT_COUNT_OF",
    "ENGAGEMENT_METRICS",
    "ENGAGEMENT_ROLLUP",
    "EVENTS",
    "EVENT_HEAD",
    "PROFILE_COUNTS",
    "PROFILE_COUNT_OF",
    "PROFILE_FIGURES",
    "PROFILE_LATEST",
    "PROFILE_METRICS",
    "PROFILE_ROLLUP",
    "REAL_TIME_EVENTS",
    "SNAPSHOT_FIGURE_OF",
    "TABLE_COLUMNS",
    "camel",
]

# The leading columns of every event table: one row per event, unique on (user_id, time,
# event_id).
EVENT_HEAD: Final = ("time", "user_id", "event_id", "event_type")

# profile_metrics: what one event adds (0 when it adds nothing), summed by the rollups...
PROFILE_COUNTS: Final = (
    "profile_views",
    "search_appearances",
    "connections_added",
    "connections_removed",
    "messages_received",
)
# ...absolute figures a profile_snapshot / profile_update reported (NULL otherwise)...
PROFILE_FIGURES: Final = ("total_profile_views", "connections", "followers", "profile_completeness")
# ...and everything the rollups keep the last reported value of, the influence score included.
PROFILE_LATEST: Final = (*PROFILE_FIGURES, "influence_score")

# engagement_metrics: what one post event adds, summed by the rollup.
ENGAGEMENT_COUNTS: Final = ("posts_published", "impressions", "likes", "comments", "shares")

# A rollup bucket's row count.
EVENTS: Final = "events"

PROFILE_METRICS: Final = (*EVENT_HEAD, *PROFILE_COUNTS, *PROFILE_LATEST)
ENGAGEMENT_METRICS: Final = (*EVENT_HEAD, "post_id", *ENGAGEMENT_COUNTS)
REAL_TIME_EVENTS: Final = (*EVENT_HEAD, "value", "properties", "received_at")

# Column order of the records each table receives (COPY's column list).
TABLE_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    "profile_metrics": PROFILE_METRICS,
    "engagement_metrics": ENGAGEMENT_METRICS,
    "real_time_events": REAL_TIME_EVENTS,
}

# The columns a rollup stores besides (bucket, user_id): profile_metrics_5min, _hourly, _daily
# and engagement_hourly (whose engagement_rate is derived from these, never written).
PROFILE_ROLLUP: Final = (*PROFILE_COUNTS, *PROFILE_LATEST, EVENTS)
ENGAGEMENT_ROLLUP: Final = (*ENGAGEMENT_COUNTS, EVENTS)

# Event type -> the count column its `value` is stored in.
PROFILE_COUNT_OF: Final[Mapping[str, str]] = {
    "profile_view": "profile_views",
    "search_appearance": "search_appearances",
    "connection_added": "connections_added",
    "connection_removed": "connections_removed",
    "message_received": "messages_received",
}
ENGAGEMENT_COUNT_OF: Final[Mapping[str, str]] = {
    "post_published": "posts_published",
    "post_impression": "impressions",
    "post_like": "likes",
    "post_comment": "comments",
    "post_share": "shares",
}
# profile_snapshot property -> the whole-number figure column it is stored in. Completeness, a
# percentage sent as `profile_completeness` or `completeness` by profile_update too, is apart.
SNAPSHOT_FIGURE_OF: Final[Mapping[str, str]] = {
    "profile_views": "total_profile_views",
    "connections": "connections",
    "followers": "followers",
}


def camel(column: str) -> str:
    """A column's name in the API's JSON: `total_profile_views` -> `totalProfileViews`."""
    head, *rest = column.split("_")
    return head + "".join(part.capitalize() for part in rest)
