"""Rollup maintenance for the Apache edition, where TimescaleDB has no continuous aggregates.

Each affected (user, bucket) is recomputed from the raw rows and upserted, never incremented:
recomputing is idempotent (a redelivered batch changes nothing), handles late events (they
only widen the recomputed range) and yields exactly what the full edition's continuous
aggregates define (migrations/0004_rollups.up.sql uses the same expressions). Recomputes of
one user are serialised by a transaction-scoped advisory lock, so the later one always reads
the other's rows: an older snapshot can never overwrite a newer result.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

from sinks.db import Conn

__all__ = ["ROLLUPS", "edition", "recompute"]

# relation -> (bucket width, source table)
ROLLUPS: Final[Mapping[str, tuple[timedelta, str]]] = {
    "profile_metrics_5min": (timedelta(minutes=5), "profile_metrics"),
    "profile_metrics_hourly": (timedelta(hours=1), "profile_metrics"),
    "profile_metrics_daily": (timedelta(days=1), "profile_metrics"),
    "engagement_hourly": (timedelta(hours=1), "engagement_metrics"),
}

_PROFILE: Final = """
INSERT INTO {rollup} AS r (bucket, user_id, profile_views, search_appearances, connections_added,
    connections_removed, messages_received, total_profile_views, connections, followers,
    profile_completeness, influence_score, events)
SELECT time_bucket($4::interval, p.time) AS bucket, p.user_id,
       sum(p.profile_views), sum(p.search_appearances), sum(p.connections_added),
       sum(p.connections_removed), sum(p.messages_received),
       last(p.total_profile_views, p.time) FILTER (WHERE p.total_profile_views IS NOT NULL),
       last(p.connections, p.time) FILTER (WHERE p.connections IS NOT NULL),
       last(p.followers, p.time) FILTER (WHERE p.followers IS NOT NULL),
       last(p.profile_completeness, p.time) FILTER (WHERE p.profile_completeness IS NOT NULL),
       last(p.influence_score, p.time) FILTER (WHERE p.influence_score IS NOT NULL),
       count(*)
FROM profile_metrics p
JOIN unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS t(user_id, lo, hi)
  ON p.user_id = t.user_id AND p.time >= t.lo AND p.time < t.hi
GROUP BY 1, 2
ON CONFLICT (user_id, bucket) DO UPDATE SET
    profile_views = EXCLUDED.profile_views,
    search_appearances = EXCLUDED.search_appearances,
    connections_added = EXCLUDED.connections_added,
    connections_removed = EXCLUDED.connections_removed,
    messages_received = EXCLUDED.messages_received,
    total_profile_views = EXCLUDED.total_profile_views,
    connections = EXCLUDED.connections,
    followers = EXCLUDED.followers,
    profile_completeness = EXCLUDED.profile_completeness,
    influence_score = EXCLUDED.influence_score,
    events = EXCLUDED.events
"""

_ENGAGEMENT: Final = """
INSERT INTO {rollup} AS r (bucket, user_id, posts_published, impressions, likes, comments,
    shares, events)
SELECT time_bucket($4::interval, e.time) AS bucket, e.user_id,
       sum(e.posts_published), sum(e.impressions), sum(e.likes), sum(e.comments),
       sum(e.shares), count(*)
FROM engagement_metrics e
JOIN unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS t(user_id, lo, hi)
  ON e.user_id = t.user_id AND e.time >= t.lo AND e.time < t.hi
GROUP BY 1, 2
ON CONFLICT (user_id, bucket) DO UPDATE SET
    posts_published = EXCLUDED.posts_published,
    impressions = EXCLUDED.impressions,
    likes = EXCLUDED.likes,
    comments = EXCLUDED.comments,
    shares = EXCLUDED.shares,
    events = EXCLUDED.events
"""

# Buckets whose raw rows are all gone (never happens for appends; possible after a manual
# delete) are removed, so a recompute always leaves the rollup equal to the raw data.
_DELETE_EMPTY: Final = """
DELETE FROM {rollup} r
USING unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS t(user_id, lo, hi)
WHERE r.user_id = t.user_id AND r.bucket >= t.lo AND r.bucket < t.hi
  AND NOT EXISTS (SELECT 1 FROM {source} s WHERE s.user_id = r.user_id
                  AND s.time >= r.bucket AND s.time < r.bucket + $4::interval)
"""


async def edition(conn: Conn) -> str:
    """'timescale' (full: continuous aggregates) or 'apache' (rollups are ours to maintain)."""
    value = await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
    return str(value or "apache")


def _align(t: datetime, width: timedelta) -> datetime:
    """The start of t's bucket; time_bucket aligns to the Unix epoch for these widths."""
    epoch = datetime(1970, 1, 1, tzinfo=t.tzinfo)
    return epoch + ((t - epoch) // width) * width


async def recompute(conn: Conn, touched: Mapping[str, tuple[datetime, datetime]]) -> int:
    """Recompute every rollup bucket overlapping each user's [first, last] event time.

    Returns the number of rollup rows written. Runs in one transaction.
    """
    if not touched:
        return 0
    users = sorted(touched)
    written = 0
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('ia-rollup:' || u)) FROM unnest($1::text[]) u",
            users,
        )
        for rollup, (width, source) in ROLLUPS.items():
            lows = [_align(touched[u][0], width) for u in users]
            highs = [_align(touched[u][1], width) + width for u in users]
            sql = _PROFILE if source == "profile_metrics" else _ENGAGEMENT
            status = await conn.execute(sql.format(rollup=rollup), users, lows, highs, width)
            written += int(status.rsplit(" ", 1)[1])
            await conn.execute(
                _DELETE_EMPTY.format(rollup=rollup, source=source), users, lows, highs, width
            )
    return written
