"""Read queries of the analytics API (gateway/api_*.py): series, past values, feed, aggregations.

Every query is per user and walks an index whose leading columns are (user_id, time/bucket),
so its cost follows the rows in the requested range, not the size of the tables.

Series read the rollups for buckets before `raw_from` and aggregate the raw rows from
`raw_from` on, with the rollups' own expressions (sinks/rollups.py:aggregates, the ones
migrations/0004_rollups.up.sql defines), so the two parts are the same figures and meet
without overlap. Goals live in sinks/goals.py, past
values in sinks/queries/past_values.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg

from schemas.events import MAX_FUTURE_SKEW_S
from schemas.tables import ENGAGEMENT_ROLLUP, PROFILE_ROLLUP
from sinks.db import Conn
from sinks.rollups import aggregates

__all__ = [
    "PROFILE_ROLLUPS",
    "ROLLUP_MARGIN",
    "aggregation_rows",
    "engagement_series",
    "feed_page",
    "profile_series",
]

# How far the rollups may trail the raw rows: the rollup group's lag on the Apache edition,
# the 5-minute refresh offset on the full one. Newer buckets are always read raw.
ROLLUP_MARGIN: Final = timedelta(minutes=5)
# Events may be stamped up to this far ahead of the clock (the gateway refuses more).
MAX_FUTURE: Final = timedelta(seconds=MAX_FUTURE_SKEW_S)
# bucket parameter -> (rollup relation, bucket width)
PROFILE_ROLLUPS: Final[dict[str, tuple[str, timedelta]]] = {
    "5m": ("profile_metrics_5min", timedelta(minutes=5)),
    "1h": ("profile_metrics_hourly", timedelta(hours=1)),
    "1d": ("profile_metrics_daily", timedelta(days=1)),
}

# $1 user, $2..$3 rollup buckets [lo, hi), $4..$5 raw rows [lo, hi), $6 bucket width.
_PROFILE_SERIES: Final = """
SELECT bucket, {columns}
FROM {{rollup}}
WHERE user_id = $1 AND bucket >= $2 AND bucket < $3
UNION ALL
SELECT time_bucket($6::interval, p.time),
       {aggregates}
FROM profile_metrics p
WHERE p.user_id = $1 AND p.time >= $4 AND p.time < $5
GROUP BY 1
ORDER BY 1
""".format(columns=", ".join(PROFILE_ROLLUP), aggregates=aggregates("profile_metrics", "p"))

# engagement_hourly is the only engagement rollup: daily buckets are sums of its hours.
_ENGAGEMENT_SERIES: Final = """
SELECT time_bucket($6::interval, bucket) AS bucket,
       {sums}
FROM engagement_hourly
WHERE user_id = $1 AND bucket >= $2 AND bucket < $3
GROUP BY 1
UNION ALL
SELECT time_bucket($6::interval, e.time),
       {aggregates}
FROM engagement_metrics e
WHERE e.user_id = $1 AND e.time >= $4 AND e.time < $5
GROUP BY 1
ORDER BY 1
""".format(
    sums=",\n       ".join(f"sum({c})::bigint AS {c}" for c in ENGAGEMENT_ROLLUP),
    aggregates=aggregates("engagement_metrics", "e"),
)


def _split(start: datetime, end: datetime, raw_from: datetime) -> tuple[datetime, ...]:
    """(rollup lo, rollup hi, raw lo, raw hi): an empty part gets an empty range."""
    cut = min(max(raw_from, start), end)
    return start, cut, cut, end


async def profile_series(
    conn: Conn, user_id: str, bucket: str, start: datetime, end: datetime, raw_from: datetime
) -> list[asyncpg.Record]:
    """Buckets of [start, end) with at least one event; `raw_from` is bucket-aligned."""
    rollup, width = PROFILE_ROLLUPS[bucket]
    sql = _PROFILE_SERIES.format(rollup=rollup)
    return await conn.fetch(sql, user_id, *_split(start, end, raw_from), width)


async def engagement_series(
    conn: Conn, user_id: str, width: timedelta, start: datetime, end: datetime, raw_from: datetime
) -> list[asyncpg.Record]:
    """Buckets (1 h or 1 day) of [start, end) with at least one event."""
    return await conn.fetch(_ENGAGEMENT_SERIES, user_id, *_split(start, end, raw_from), width)


# Newest first; ties on time in event_id order, the index's own order, so the scan needs no
# sort. The cursor (time, event_id) is the last row of the previous page. `time > lower`
# keeps the planner to the chunks of a window: without a lower bound it plans every chunk
# of the table (tens of milliseconds once a month is stored).
_FEED: Final = """
SELECT time, event_id, event_type, value, properties::text AS properties, received_at
FROM real_time_events
WHERE user_id = $1 AND time > $2 {cursor} {types}
ORDER BY time DESC, event_id
LIMIT {limit}
"""
_FEED_CURSOR: Final = "AND time <= $3 AND (time < $3 OR event_id > $4)"
# Windows tried in turn, back from the cursor (or now), until one holds a full page; None is
# the whole table. Active users fill a page from the first.
FEED_WINDOWS: Final = (timedelta(days=1), timedelta(days=8), None)
_BEFORE_ANY_ROW: Final = datetime(1970, 1, 1, tzinfo=UTC)


async def feed_page(
    conn: Conn,
    user_id: str,
    *,
    after: tuple[datetime, str] | None,
    types: Sequence[str] | None,
    limit: int,
    now: datetime,
) -> list[asyncpg.Record]:
    """Up to `limit` events of the user after the cursor `after` (time, event_id); the first
    page's windows reach back from `now` (plus a producer's clock skew)."""
    args: list[object] = [user_id, _BEFORE_ANY_ROW]
    cursor = ""
    if after is not None:
        cursor = _FEED_CURSOR
        args += [after[0], after[1]]
    type_filter = ""
    if types:
        args.append(list(types))
        type_filter = f"AND event_type = ANY(${len(args)}::text[])"
    sql = _FEED.format(cursor=cursor, types=type_filter, limit=int(limit))
    newest = after[0] if after is not None else now + MAX_FUTURE
    rows: list[asyncpg.Record] = []
    for window in FEED_WINDOWS:
        args[1] = newest - window if window is not None else _BEFORE_ANY_ROW
        rows = await conn.fetch(sql, *args)
        if len(rows) >= limit:
            break
    return rows


_AGGREGATIONS: Final = """
SELECT time, metric_name, period, value, sample_count
FROM metric_aggregations
WHERE user_id = $1 AND metric_name = ANY($2::text[]) AND time >= $3 AND time < $4
ORDER BY time, metric_name, period
"""


async def aggregation_rows(
    conn: Conn, user_id: str, names: Sequence[str], start: datetime, end: datetime
) -> list[asyncpg.Record]:
    return await conn.fetch(_AGGREGATIONS, user_id, list(names), start, end)
