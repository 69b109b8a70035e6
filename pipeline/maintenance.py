"""Data lifecycle and derived series: `analytics maintenance run`, and on a schedule in workers.

- Retention: with the Apache edition, `drop_chunks` on raw tables and rollups older than
  RETENTION_DAYS (daily rollups: 730 days); with the full edition the migration's policies do it.
- Derived aggregations: per-user series in `metric_aggregations` that the rollups do not give
  directly, recomputed as of now and upserted (so a rerun or a backfill just replaces them).
- A report: edition, chunk counts, compressed chunks, how far each rollup lags its raw data.
Workers run it every MAINTENANCE_INTERVAL, one replica at a time through a Redis lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, Final

import redis.asyncio as redis

from schemas.settings import Settings
from sinks.db import Conn, connect
from sinks.rollups import ROLLUPS, edition

__all__ = ["AGGREGATIONS", "compute_aggregations", "report", "run", "run_scheduled"]

log = logging.getLogger(__name__)

RAW_TABLES: Final = (
    "profile_metrics",
    "engagement_metrics",
    "real_time_events",
    "metric_aggregations",
    "alert_history",
    "performance_metrics",
)
DAILY_RETENTION_DAYS: Final = 730
# Held while one replica runs maintenance; expires on its own if that replica dies.
LOCK_KEY: Final = "ia:lock:maintenance"

# name -> (period, SQL computing (user_id, value, samples) for users active in 30 days, as of $1)
AGGREGATIONS: Final[dict[str, tuple[str, str]]] = {
    "engagement_rate_7d": (
        "7d",
        """
        SELECT user_id, (sum(likes) + sum(comments) + sum(shares))::float8
                        / NULLIF(sum(impressions), 0), count(*)::int
        FROM engagement_hourly WHERE bucket > $1 - interval '7 days' AND bucket <= $1
        GROUP BY user_id""",
    ),
    "engagement_rate_30d": (
        "30d",
        """
        SELECT user_id, (sum(likes) + sum(comments) + sum(shares))::float8
                        / NULLIF(sum(impressions), 0), count(*)::int
        FROM engagement_hourly WHERE bucket > $1 - interval '30 days' AND bucket <= $1
        GROUP BY user_id""",
    ),
    "connection_growth_rate_30d": (
        "30d",
        """
        SELECT user_id,
               (sum(connections_added) - sum(connections_removed))::float8
               / NULLIF((array_agg(connections ORDER BY bucket)
                         FILTER (WHERE connections IS NOT NULL))[1], 0),
               count(*)::int
        FROM profile_metrics_daily WHERE bucket > $1 - interval '30 days' AND bucket <= $1
        GROUP BY user_id""",
    ),
    "profile_views_wow": (
        "7d",
        """
        SELECT user_id,
               (sum(profile_views) FILTER (WHERE bucket > $1 - interval '7 days')
                - sum(profile_views) FILTER (WHERE bucket <= $1 - interval '7 days'))::float8
               / NULLIF(sum(profile_views) FILTER (WHERE bucket <= $1 - interval '7 days'), 0),
               count(*)::int
        FROM profile_metrics_hourly WHERE bucket > $1 - interval '14 days' AND bucket <= $1
        GROUP BY user_id""",
    ),
    "posting_cadence_30d": (
        "30d",
        """
        SELECT user_id, sum(posts_published)::float8 / 30 * 7, count(*)::int
        FROM engagement_hourly WHERE bucket > $1 - interval '30 days' AND bucket <= $1
        GROUP BY user_id""",
    ),
}

# The leading CTE pins $1's type: inside the queries it first meets an interval subtraction.
_UPSERT: Final = """
WITH pinned AS (SELECT $1::timestamptz AS at)
INSERT INTO metric_aggregations (time, user_id, metric_name, period, value, sample_count)
SELECT $2, a.user_id, $3, $4, a.value, a.samples
FROM ({query}) AS a(user_id, value, samples)
ON CONFLICT (user_id, metric_name, period, time) DO UPDATE
SET value = EXCLUDED.value, sample_count = EXCLUDED.sample_count, computed_at = now()
"""


async def compute_aggregations(conn: Conn, at: datetime | None = None) -> dict[str, int]:
    """Upsert every derived series as of `at` (default now), stamped on the hour."""
    now = at or datetime.now(UTC)
    stamp = now.replace(minute=0, second=0, microsecond=0)
    written = {}
    async with conn.transaction():  # one snapshot for every series
        for name, (period, query) in AGGREGATIONS.items():
            status = await conn.execute(_UPSERT.format(query=query), now, stamp, name, period)
            written[name] = int(status.rsplit(" ", 1)[1])
    return written


async def _retention(conn: Conn, retention_days: int) -> dict[str, int]:
    dropped: dict[str, int] = {}
    for table in (*RAW_TABLES, *(r for r in ROLLUPS if r != "profile_metrics_daily")):
        rows = await conn.fetch(
            "SELECT drop_chunks($1::regclass, older_than => now() - make_interval(days => $2))",
            table,
            retention_days,
        )
        dropped[table] = len(rows)
    rows = await conn.fetch(
        "SELECT drop_chunks('profile_metrics_daily', "
        "older_than => now() - make_interval(days => $1))",
        DAILY_RETENTION_DAYS,
    )
    dropped["profile_metrics_daily"] = len(rows)
    return dropped


async def report(conn: Conn) -> dict[str, Any]:
    """Edition, chunk counts, compression and rollup freshness, for `/status` and the CLI."""
    ed = await edition(conn)
    chunks = {
        r["hypertable_name"]: {"chunks": r["chunks"], "compressed": r["compressed"]}
        for r in await conn.fetch(
            "SELECT hypertable_name, count(*) AS chunks, "
            "count(*) FILTER (WHERE is_compressed) AS compressed "
            "FROM timescaledb_information.chunks GROUP BY 1"
        )
    }
    freshness = {}
    for rollup, (width, source) in ROLLUPS.items():
        rolled = await conn.fetchval(f"SELECT max(bucket) FROM {rollup}")  # noqa: S608
        raw = await conn.fetchval(f"SELECT max(time) FROM {source}")  # noqa: S608
        # A bucket covers [bucket, bucket + width): it is current when it holds the newest row.
        behind: float | None = 0.0
        if raw is not None:
            behind = None if rolled is None else max(0.0, (raw - (rolled + width)).total_seconds())
        freshness[rollup] = {
            "newest_bucket": rolled.isoformat() if rolled else None,
            "newest_raw": raw.isoformat() if raw else None,
            "behind_seconds": behind,
        }
    return {
        "edition": ed,
        "compression": "policy: after 7 days" if ed == "timescale" else "unavailable (apache)",
        "retention": "policy: 90 days" if ed == "timescale" else "maintenance task: drop_chunks",
        "chunks": chunks,
        "rollup_freshness": freshness,
    }


async def run(conn: Conn, settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    ed = await edition(conn)
    dropped = await _retention(conn, settings.retention_days) if ed != "timescale" else {}
    aggregations = await compute_aggregations(conn)
    out = {"dropped_chunks": dropped, "aggregations": aggregations, **await report(conn)}
    out["seconds"] = round(time.perf_counter() - started, 3)
    log.info(
        "maintenance done",
        extra={"dropped": sum(dropped.values()), "aggregations": sum(aggregations.values())},
    )
    return out


async def run_scheduled(settings: Settings, client: redis.Redis, stop: asyncio.Event) -> None:
    """Every MAINTENANCE_INTERVAL, run maintenance if no other replica holds the lock."""
    interval = settings.maintenance_interval
    while not stop.is_set():
        try:
            if await client.set(LOCK_KEY, b"1", nx=True, px=int(interval * 900)):
                conn = await connect(settings)
                try:
                    await run(conn, settings)
                finally:
                    await conn.close()
        except Exception:
            # One failed run must not end the schedule: the next interval tries again.
            log.exception("maintenance failed")
        try:
            async with asyncio.timeout(interval):
                await stop.wait()
        except TimeoutError:
            pass
