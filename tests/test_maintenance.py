"""Maintenance: retention drops old chunks only, the edition's lifecycle is reported, derived
aggregations match raw data, and the schedule runs on one replica at a time."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from migrations import runner
from pipeline import maintenance
from pipeline.worker import open_redis
from schemas.settings import Settings
from seeder.generate import seed
from sinks.db import connect
from tests.conftest import ScratchDb


async def _fresh(scratch_db: ScratchDb) -> tuple[Settings, asyncpg.Connection]:
    s = await scratch_db()
    conn = await connect(s)
    await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    await runner.up(conn)
    return s, conn


async def test_retention_drops_chunks_older_than_the_window_and_keeps_the_rest(
    scratch_db: ScratchDb,
) -> None:
    s, conn = await _fresh(scratch_db)
    try:
        now = datetime.now(UTC)
        rows = [
            (now - timedelta(days=days), "ret-user", f"e{days}", "profile_view")
            for days in (120, 100, 95, 80, 1)
        ]
        await conn.executemany(
            "INSERT INTO real_time_events (time, user_id, event_id, event_type, received_at) "
            "VALUES ($1, $2, $3, $4, $1)",
            rows,
        )
        out = await maintenance.run(conn, s)
        left = [
            r["event_id"]
            for r in await conn.fetch("SELECT event_id FROM real_time_events ORDER BY time")
        ]
        if out["edition"] == "timescale":
            assert out["retention"].startswith("policy")
            assert out["dropped_chunks"] == {}
        else:
            assert out["dropped_chunks"]["real_time_events"] == 3
            assert left == ["e80", "e1"]
            assert out["compression"] == "unavailable (apache)"
            assert out["chunks"]["real_time_events"]["compressed"] == 0
    finally:
        await conn.close()


async def test_aggregations_match_raw_data_and_report_shows_fresh_rollups(
    scratch_db: ScratchDb,
) -> None:
    s, conn = await _fresh(scratch_db)
    try:
        until = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        report = await seed(conn, users=3, days=20, seed=11, until=until)
        at = until + timedelta(minutes=30)
        written = await maintenance.compute_aggregations(conn, at)
        assert written["profile_views_wow"] == written["connection_growth_rate_30d"] == 3
        for user in report.users:
            expected = await conn.fetchval(
                "SELECT (sum(likes) + sum(comments) + sum(shares))::float8 / sum(impressions) "
                "FROM engagement_metrics WHERE user_id = $1 "
                "AND time >= date_trunc('hour', $2::timestamptz - interval '7 days') "
                "+ interval '1 hour' AND time < $2",
                user,
                at,
            )
            got = await conn.fetchval(
                "SELECT value FROM metric_aggregations WHERE user_id = $1 "
                "AND metric_name = 'engagement_rate_7d'",
                user,
            )
            assert got == (None if expected is None else pytest.approx(expected))
            cadence = await conn.fetchval(
                "SELECT value FROM metric_aggregations WHERE user_id = $1 "
                "AND metric_name = 'posting_cadence_30d'",
                user,
            )
            posts = await conn.fetchval(
                "SELECT count(*) FROM engagement_metrics WHERE user_id = $1 "
                "AND event_type = 'post_published'",
                user,
            )
            assert cadence == (pytest.approx(posts / 30 * 7) if posts else None)
        # Recomputing replaces the points instead of adding new ones.
        await maintenance.compute_aggregations(conn, at)
        assert await conn.fetchval("SELECT count(*) FROM metric_aggregations") == sum(
            written.values()
        )
        status = await maintenance.report(conn)
        for rollup, fresh in status["rollup_freshness"].items():
            assert fresh["behind_seconds"] == 0.0, rollup
    finally:
        await conn.close()


async def test_scheduled_maintenance_runs_on_one_replica_at_a_time(
    scratch_db: ScratchDb, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.maintenance")
    s, conn = await _fresh(scratch_db)
    s = dataclasses.replace(s, maintenance_interval=10, redis_db=9)
    client = open_redis(s)
    await client.delete(maintenance.LOCK_KEY)
    try:
        until = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        await seed(conn, users=1, days=2, seed=1, until=until)
        await conn.execute("DELETE FROM metric_aggregations")
        stop = asyncio.Event()
        replicas = [
            asyncio.create_task(maintenance.run_scheduled(s, client, stop)) for _ in range(2)
        ]
        async with asyncio.timeout(20):
            while not await conn.fetchval("SELECT count(*) FROM metric_aggregations"):
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*replicas)
        # One run computed each aggregation once; the lock kept the other replica out.
        assert await client.pttl(maintenance.LOCK_KEY) > 0
        computed = await conn.fetchval(
            "SELECT count(DISTINCT computed_at) FROM metric_aggregations"
        )
        assert computed == 1
    finally:
        await client.delete(maintenance.LOCK_KEY)
        await client.aclose()
        await conn.close()
