"""Keeping the rollups equal to the raw data, in both editions (`level`).

Full edition: the rollups are continuous aggregates with refresh policies, but a policy only
materialises its own window (1 day for 5 min, 3 days hourly, 7 days daily), so a late event
older than that would never reach its buckets: they are read from the materialisation, below
the aggregate's watermark. `refresh` materialises the ended buckets a batch touched; buckets
still filling stay above the watermark, computed from the raw rows at query time.

Apache edition, where TimescaleDB has no continuous aggregates: each affected (user, bucket) is
recomputed from the raw rows and upserted, never incremented: recomputing is idempotent (a
redelivered batch changes nothing), handles late events (they only widen the recomputed range)
and yields exactly what the full edition's continuous aggregates define
(migrations/0004_rollups.up.sql uses the same expressions). Recomputes of one user are
serialised by a transaction-scoped advisory lock, so the later one always reads the other's
rows: an older snapshot can never overwrite a newer result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Final

from sinks.db import Conn

__all__ = ["ROLLUPS", "edition", "level", "recompute", "refresh", "watermark"]

# relation -> (bucket width, source table)
ROLLUPS: Final[Mapping[str, tuple[timedelta, str]]] = {
    "profile_metrics_5min": (timedelta(minutes=5), "profile_metrics"),
    "profile_metrics_hourly": (timedelta(hours=1), "profile_metrics"),
    "profile_metrics_daily": (timedelta(days=1), "profile_metrics"),
    "engagement_hourly": (timedelta(hours=1), "engagement_metrics"),
}

_PROFILE: Final = """
SELECT time_bucket($4::interval, p.time) AS bucket, p.user_id,
       sum(p.profile_views) AS profile_views, sum(p.search_appearances) AS search_appearances,
       sum(p.connections_added) AS connections_added,
       sum(p.connections_removed) AS connections_removed,
       sum(p.messages_received) AS messages_received,
       last(p.total_profile_views, p.time) FILTER (WHERE p.total_profile_views IS NOT NULL)
           AS total_profile_views,
       last(p.connections, p.time) FILTER (WHERE p.connections IS NOT NULL) AS connections,
       last(p.followers, p.time) FILTER (WHERE p.followers IS NOT NULL) AS followers,
       last(p.profile_completeness, p.time) FILTER (WHERE p.profile_completeness IS NOT NULL)
           AS profile_completeness,
       last(p.influence_score, p.time) FILTER (WHERE p.influence_score IS NOT NULL)
           AS influence_score,
       count(*) AS events
FROM profile_metrics p
JOIN spans t ON p.user_id = t.user_id AND p.time >= t.lo AND p.time < t.hi
WHERE p.time >= $5 AND p.time < $6
GROUP BY 1, 2
"""
_PROFILE_COLUMNS: Final = (
    "profile_views",
    "search_appearances",
    "connections_added",
    "connections_removed",
    "messages_received",
    "total_profile_views",
    "connections",
    "followers",
    "profile_completeness",
    "influence_score",
    "events",
)

_ENGAGEMENT: Final = """
SELECT time_bucket($4::interval, e.time) AS bucket, e.user_id,
       sum(e.posts_published) AS posts_published, sum(e.impressions) AS impressions,
       sum(e.likes) AS likes, sum(e.comments) AS comments, sum(e.shares) AS shares,
       count(*) AS events
FROM engagement_metrics e
JOIN spans t ON e.user_id = t.user_id AND e.time >= t.lo AND e.time < t.hi
WHERE e.time >= $5 AND e.time < $6
GROUP BY 1, 2
"""
_ENGAGEMENT_COLUMNS: Final = (
    "posts_published",
    "impressions",
    "likes",
    "comments",
    "shares",
    "events",
)

# One statement: compute the buckets, upsert them, and delete buckets of the span that no
# longer have raw rows (possible only after a manual delete), so a recompute always leaves
# the rollup equal to the raw data. All parts see one snapshot; the delete never touches a
# row the upsert writes, since it only removes buckets absent from `fresh`. $5 and $6 bound
# every span with constants: the joins alone exclude no chunk when the statement is planned,
# so it would open (and lock) every chunk of the table.
_STATEMENT: Final = """
WITH spans AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS t(user_id, lo, hi)
),
fresh AS ({select}),
upserted AS (
    INSERT INTO {rollup} (bucket, user_id, {columns})
    SELECT bucket, user_id, {columns} FROM fresh
    ON CONFLICT (user_id, bucket) DO UPDATE SET {assignments}
    RETURNING 1
),
removed AS (
    DELETE FROM {rollup} r USING spans t
    WHERE r.user_id = t.user_id AND r.bucket >= t.lo AND r.bucket < t.hi
      AND r.bucket >= $5 AND r.bucket < $6
      AND NOT EXISTS (SELECT 1 FROM fresh f WHERE f.user_id = r.user_id AND f.bucket = r.bucket)
    RETURNING 1
)
SELECT (SELECT count(*) FROM upserted) AS upserted, (SELECT count(*) FROM removed) AS removed
"""


def _statement(rollup: str, source: str) -> str:
    select, columns = (
        (_PROFILE, _PROFILE_COLUMNS)
        if source == "profile_metrics"
        else (_ENGAGEMENT, _ENGAGEMENT_COLUMNS)
    )
    return _STATEMENT.format(
        select=select,
        rollup=rollup,
        columns=", ".join(columns),
        assignments=", ".join(f"{c} = EXCLUDED.{c}" for c in columns),
    )


_STATEMENTS: Final = {rollup: _statement(rollup, source) for rollup, (_, source) in ROLLUPS.items()}


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
        for rollup, (width, _) in ROLLUPS.items():
            lows = [_align(touched[u][0], width) for u in users]
            highs = [_align(touched[u][1], width) + width for u in users]
            row = await conn.fetchrow(
                _STATEMENTS[rollup], users, lows, highs, width, min(lows), max(highs)
            )
            written += int(row["upserted"]) if row is not None else 0
    return written


# The watermark of a continuous aggregate: below it, buckets are read from the materialisation.
# Clamped into asyncpg's datetime range: an aggregate never refreshed answers the minimum
# timestamp TimescaleDB knows (4714 BC).
_WATERMARK: Final = """
SELECT least(greatest(coalesce(_timescaledb_functions.to_timestamp(
           _timescaledb_functions.cagg_watermark(mat_hypertable_id)), '-infinity'),
           '1970-01-01'::timestamptz), '9999-01-01'::timestamptz)
FROM _timescaledb_catalog.continuous_agg
WHERE user_view_schema = current_schema() AND user_view_name = $1
"""


async def watermark(conn: Conn, rollup: str) -> datetime | None:
    """Where a continuous aggregate's materialisation ends (None: not one, Apache edition)."""
    value: datetime | None = await conn.fetchval(_WATERMARK, rollup)
    return value


def _windows(
    spans: Iterable[tuple[datetime, datetime]], width: timedelta
) -> list[tuple[datetime, datetime]]:
    """The spans widened to whole buckets and merged where they meet: one refresh per window,
    instead of one per user or one over everything between the oldest and newest span."""
    merged: list[tuple[datetime, datetime]] = []
    for lo, hi in sorted((_align(lo, width), _align(hi, width) + width) for lo, hi in spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


async def refresh(
    conn: Conn, spans: Iterable[tuple[datetime, datetime]], now: datetime | None = None
) -> int:
    """Refresh every continuous aggregate over the spans (full edition), whole buckets only
    and none that has not ended by `now` (default: the server's clock): a bucket still filling
    stays computed from the raw rows at query time, and materialising it would freeze it below
    the watermark. Must run outside a transaction, as TimescaleDB requires; returns the
    refreshes run."""
    spans = list(spans)
    if not spans:
        return 0
    at = now or await conn.fetchval("SELECT now()")
    calls = 0
    for rollup, (width, _) in ROLLUPS.items():
        ended = _align(at, width)
        for lo, hi in _windows(spans, width):
            end = min(hi, ended)
            if lo >= end:
                continue
            await conn.execute(
                "CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)",
                rollup,
                lo,
                end,
            )
            calls += 1
    return calls


async def level(
    conn: Conn, touched: Mapping[str, tuple[datetime, datetime]], *, full: bool | None = None
) -> int:
    """Bring the rollups level with each user's touched [first, last] event time: a refresh
    of the continuous aggregates (`full` edition; read from the server when not given) or a
    recompute of the rollup tables. Returns refreshes run or rollup rows written."""
    if full is None:
        full = await edition(conn) == "timescale"
    if full:
        return await refresh(conn, touched.values())
    return await recompute(conn, touched)
