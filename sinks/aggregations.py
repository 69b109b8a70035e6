"""Derived series: compute them into `metric_aggregations` and announce what changed.

The SQL of each series in schemas/aggregations.py lives here; `compute_aggregations` upserts
every series as of a moment in one transaction and reports, per user, the current values that
changed; `publish_aggregations` invalidates those users' cached API answers and appends the
changed values to `ia:metrics` (schemas/entries.py), so WebSocket subscribers get a
`metrics_update`. The maintenance task (pipeline/maintenance.py) runs both on its schedule;
the seeder backfills a point per day of its history with `compute_aggregations`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import redis.asyncio as redis
from redis.typing import EncodableT, FieldT

from schemas.aggregations import AGGREGATIONS, CURRENT_LOOKBACK, UPDATES_PER_ENTRY
from schemas.entries import metric_update, metrics_entry
from schemas.streams import METRICS_STREAM
from schemas.timefmt import iso_ms
from sinks.cache_generations import invalidate
from sinks.db import Conn

__all__ = [
    "AggregationRun",
    "compute_aggregations",
    "metrics_entries",
    "publish_aggregations",
    "refresh_aggregations",
]

# name (schemas/aggregations.py) -> SQL computing (user_id, value, samples) for the users with
# data in the series' window, as of $1. A bucket counts when it starts in [$1 - N days, $1): on
# the hour (the seeder's backfill) that is exactly the N days before $1, never the hour after
# it; within an hour (the schedule) it is the bucket holding $1 and those of the N days before.
_SQL: Final[dict[str, str]] = {
    "engagement_rate_7d": """
        SELECT user_id, (sum(likes) + sum(comments) + sum(shares))::float8
                        / NULLIF(sum(impressions), 0), count(*)::int
        FROM engagement_hourly WHERE bucket >= $1 - interval '7 days' AND bucket < $1
        GROUP BY user_id""",
    "engagement_rate_30d": """
        SELECT user_id, (sum(likes) + sum(comments) + sum(shares))::float8
                        / NULLIF(sum(impressions), 0), count(*)::int
        FROM engagement_hourly WHERE bucket >= $1 - interval '30 days' AND bucket < $1
        GROUP BY user_id""",
    "connection_growth_rate_30d": """
        SELECT user_id,
               (sum(connections_added) - sum(connections_removed))::float8
               / NULLIF((array_agg(connections ORDER BY bucket)
                         FILTER (WHERE connections IS NOT NULL))[1], 0),
               count(*)::int
        FROM profile_metrics_daily WHERE bucket >= $1 - interval '30 days' AND bucket < $1
        GROUP BY user_id""",
    "profile_views_wow": """
        SELECT user_id,
               (sum(profile_views) FILTER (WHERE bucket >= $1 - interval '7 days')
                - sum(profile_views) FILTER (WHERE bucket < $1 - interval '7 days'))::float8
               / NULLIF(sum(profile_views) FILTER (WHERE bucket < $1 - interval '7 days'), 0),
               count(*)::int
        FROM profile_metrics_hourly WHERE bucket >= $1 - interval '14 days' AND bucket < $1
        GROUP BY user_id""",
    "posting_cadence_30d": """
        SELECT user_id, sum(posts_published)::float8 / 30 * 7, count(*)::int
        FROM engagement_hourly WHERE bucket >= $1 - interval '30 days' AND bucket < $1
        GROUP BY user_id""",
}

# Upsert one series and say, per user, what the write changed, all in one statement (so
# `before` reads the rows as they were before the upsert):
# - `publish`: the point written is the user's newest (not a backfill of an older hour) and its
#   value differs from the current one (the newest point within CURRENT_LOOKBACK; without one,
#   null), so dashboards must hear of it;
# - `changed`: a point was added or its value or sample count changed, so cached API answers
#   for the user may be stale. A backfill behind the newest point counts, conservatively.
# The leading CTE pins $1's type: inside the queries it first meets an interval subtraction.
_UPSERT: Final = """
WITH pinned AS (SELECT $1::timestamptz AS at),
fresh AS (SELECT * FROM ({query}) AS a(user_id, value, samples)),
before AS (
    SELECT f.user_id, p.time, p.value, p.sample_count
    FROM fresh f
    LEFT JOIN LATERAL (
        SELECT m.time, m.value, m.sample_count FROM metric_aggregations m
        WHERE m.user_id = f.user_id AND m.metric_name = $3::text AND m.period = $4::text
          AND m.time > $2::timestamptz - $5::interval
        ORDER BY m.time DESC
        LIMIT 1
    ) AS p ON true
),
upserted AS (
    INSERT INTO metric_aggregations (time, user_id, metric_name, period, value, sample_count)
    SELECT $2::timestamptz, user_id, $3::text, $4::text, value, samples FROM fresh
    ON CONFLICT (user_id, metric_name, period, time) DO UPDATE
    SET value = EXCLUDED.value, sample_count = EXCLUDED.sample_count, computed_at = now()
)
SELECT f.user_id, f.value,
       ((b.time IS NULL OR b.time <= $2::timestamptz) AND b.value IS DISTINCT FROM f.value)
           AS publish,
       (b.time IS NULL OR b.time <> $2::timestamptz OR b.value IS DISTINCT FROM f.value
        OR b.sample_count <> f.samples) AS changed
FROM fresh f JOIN before b USING (user_id)
"""


@dataclass(frozen=True, slots=True)
class AggregationRun:
    """What one computation stored and what it changed."""

    at: datetime
    committed_at: datetime
    written: dict[str, int]  # points upserted per series
    updates: dict[str, dict[str, float | None]]  # user -> WebSocket name -> new current value
    changed_users: frozenset[str]  # users whose stored points changed


async def compute_aggregations(conn: Conn, at: datetime | None = None) -> AggregationRun:
    """Upsert every derived series as of `at` (default now), stamped on the hour, in one
    transaction; returns what changed, for `publish_aggregations`."""
    now = at or datetime.now(UTC)
    stamp = now.replace(minute=0, second=0, microsecond=0)
    written: dict[str, int] = {}
    updates: dict[str, dict[str, float | None]] = {}
    changed: set[str] = set()
    async with conn.transaction():  # one snapshot for every series
        for name, a in AGGREGATIONS.items():
            rows = await conn.fetch(
                _UPSERT.format(query=_SQL[name]), now, stamp, name, a.period, CURRENT_LOOKBACK
            )
            written[name] = len(rows)
            for r in rows:
                if r["publish"]:
                    updates.setdefault(r["user_id"], {})[a.metric] = r["value"]
                if r["changed"]:
                    changed.add(r["user_id"])
    committed_at: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return AggregationRun(now, committed_at, written, updates, frozenset(changed))


def metrics_entries(run: AggregationRun) -> list[dict[FieldT, EncodableT]]:
    """The run's changed values as `ia:metrics` entries (schemas/entries.py) without
    `touched` (no raw rows changed, so the rollup group has nothing to recompute), at most
    UPDATES_PER_ENTRY updates each; one user's updates stay in one entry."""
    as_of, committed = iso_ms(run.at), iso_ms(run.committed_at)
    entries: list[dict[FieldT, EncodableT]] = []
    chunk: list[dict[str, Any]] = []
    for user in sorted(run.updates):
        values = run.updates[user]
        if chunk and len(chunk) + len(values) > UPDATES_PER_ENTRY:
            entries.append(metrics_entry(chunk))
            chunk = []
        chunk += [metric_update(user, m, v, as_of, committed) for m, v in sorted(values.items())]
    if chunk:
        entries.append(metrics_entry(chunk))
    return entries


async def publish_aggregations(client: redis.Redis, run: AggregationRun) -> int:
    """Invalidate the changed users' cached API answers, then announce the changed current
    values on `ia:metrics` (in that order, as the processor does: a dashboard refetching on an
    update must miss the cache). Returns the entries appended. A Redis error propagates; the
    points are stored already, so what is lost is the announcement (snapshots still show them)
    and, until API_CACHE_TTL, fresh API answers."""
    await invalidate(client, sorted(run.changed_users))
    entries = metrics_entries(run)
    if entries:
        async with client.pipeline(transaction=False) as pipe:
            for fields in entries:
                _ = pipe.xadd(METRICS_STREAM, fields)
            await pipe.execute()
    return len(entries)


async def refresh_aggregations(
    conn: Conn, client: redis.Redis, at: datetime | None = None
) -> AggregationRun:
    """`compute_aggregations`, then `publish_aggregations`: what every caller that stores new
    points (the schedule, a backfill) should run."""
    run = await compute_aggregations(conn, at)
    await publish_aggregations(client, run)
    return run
