"""Data lifecycle and derived series: `analytics maintenance run`, and on a schedule in workers.

- Retention: raw tables and rollups keep RETENTION_DAYS (daily rollups: 730 days). With the
  Apache edition by `drop_chunks` here; with the full edition by retention policies whose
  windows are set here from RETENTION_DAYS (sinks/retention.py).
- Derived aggregations: per-user series in `metric_aggregations` that the rollups do not give
  directly (schemas/aggregations.py names them), recomputed as of now and upserted (so a rerun
  or a backfill just replaces them). Current values that changed are announced on `ia:metrics`
  for WebSocket subscribers, after the changed users' cached API answers are invalidated.
- Goals: active goals that reached their target become `achieved`, expired ones `missed`
  (sinks/goal_status.py), and those users' cached answers are invalidated.
- A report: edition, chunk counts, compressed chunks, how far each rollup lags its raw data.
Workers run it every MAINTENANCE_INTERVAL, one replica at a time through a Redis lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import redis.asyncio as redis
from redis.exceptions import RedisError

from schemas.settings import Settings
from sinks.aggregations import AggregationRun, compute_aggregations, publish_aggregations
from sinks.cache_generations import invalidate
from sinks.db import Conn, connect
from sinks.goal_status import settle_goals
from sinks.retention import align_policies, retention_days
from sinks.rollups import ROLLUPS, edition

# compute_aggregations is re-exported: backfills and benchmarks call it from here.
__all__ = ["compute_aggregations", "report", "run", "run_scheduled"]

log = logging.getLogger(__name__)

# Held while one replica runs maintenance; expires on its own if that replica dies.
LOCK_KEY: Final = "ia:lock:maintenance"


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def _retention(conn: Conn, keep_days: int, now: datetime) -> dict[str, int]:
    """Drop the chunks that end before `now` minus the retention (the caller's clock, not the
    server's `now()`, so a run's cutoffs and its aggregations share one instant)."""
    dropped: dict[str, int] = {}
    for table, days in retention_days(keep_days).items():
        rows = await conn.fetch(
            "SELECT drop_chunks($1::regclass, "
            "older_than => $3::timestamptz - make_interval(days => $2))",
            table,
            days,
            now,
        )
        dropped[table] = len(rows)
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
        "retention": "policies" if ed == "timescale" else "maintenance task: drop_chunks",
        "chunks": chunks,
        "rollup_freshness": freshness,
    }


async def run(
    conn: Conn,
    settings: Settings,
    client: redis.Redis | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Retention, aggregations (announced through `client`; without one, e.g. from the CLI,
    through a short-lived client of REDIS_*), goals, and the report, all as of `now` (default:
    the wall clock; tests pass an instant)."""
    started = time.perf_counter()
    at = now or _utc_now()
    ed = await edition(conn)
    dropped = await _retention(conn, settings.retention_days, at) if ed != "timescale" else {}
    policies = await align_policies(conn, settings.retention_days) if ed == "timescale" else {}
    aggregations = await compute_aggregations(conn, at)
    goals = await settle_goals(conn, at)
    entries = await _announce(settings, client, aggregations, goals.users)
    out = {
        "dropped_chunks": dropped,
        "retention_policies_changed": policies,
        "aggregations": aggregations.written,
        "announced": {"entries": entries, "users": len(aggregations.updates)},
        "goals": {"achieved": goals.achieved, "missed": goals.missed},
        **await report(conn),
    }
    out["seconds"] = round(time.perf_counter() - started, 3)
    log.info(
        "maintenance done",
        extra={
            "dropped": sum(dropped.values()),
            "aggregations": sum(aggregations.written.values()),
            "announced_users": len(aggregations.updates),
        },
    )
    return out


async def _announce(
    settings: Settings, client: redis.Redis | None, run: AggregationRun, settled: set[str]
) -> int:
    """Publish the run and invalidate the cached answers of users whose goals were settled; a
    Redis failure is logged, not raised: the retention, the points and the goals are done and
    must not be redone, and the next change of each value is announced again."""
    own = client is None
    c = client or redis.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        db=settings.redis_db,
        password=settings.redis_password or None,
    )
    try:
        await invalidate(c, sorted(settled))
        return await publish_aggregations(c, run)
    except RedisError:
        log.warning("aggregations stored but not announced", exc_info=True)
        return 0
    finally:
        if own:
            await c.aclose()


async def run_scheduled(
    settings: Settings,
    client: redis.Redis,
    stop: asyncio.Event,
    clock: Callable[[], datetime] = _utc_now,
) -> None:
    """Every MAINTENANCE_INTERVAL, run maintenance as of `clock()` if no other replica holds
    the lock."""
    interval = settings.maintenance_interval
    while not stop.is_set():
        try:
            if await client.set(LOCK_KEY, b"1", nx=True, px=int(interval * 900)):
                conn = await connect(settings)
                try:
                    await run(conn, settings, client, clock())
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
