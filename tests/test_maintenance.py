"""Maintenance: retention drops old chunks only, the edition's lifecycle is reported, derived
aggregations match raw data, only their changed current values are announced on `ia:metrics`
(in bounded entries, after invalidating those users' cached answers), and the schedule runs on
one replica at a time."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis

from migrations import runner
from pipeline import maintenance
from pipeline.worker import open_redis
from schemas.aggregations import AGGREGATIONS, UPDATES_PER_ENTRY
from schemas.settings import Settings
from schemas.streams import METRICS_STREAM
from schemas.ws import metric_updates_decoder
from seeder.generate import seed
from sinks.aggregations import AggregationRun, metrics_entries, publish_aggregations
from sinks.cache_generations import generation_key
from sinks.current_values import current_values
from sinks.db import connect
from sinks.rollups import level
from tests.conftest import ScratchDb

# The schedule's and the announcement tests' Redis db: other suites flush db 15 meanwhile.
_REDIS_DB = 9


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
        written = (await maintenance.compute_aggregations(conn, at)).written
        assert set(written) == set(AGGREGATIONS)  # every series has its SQL
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
                "AND metric_name = 'engagement_rate_7d' ORDER BY time DESC LIMIT 1",
                user,
            )
            assert got == (None if expected is None else pytest.approx(expected))
            cadence = await conn.fetchval(
                "SELECT value FROM metric_aggregations WHERE user_id = $1 "
                "AND metric_name = 'posting_cadence_30d' ORDER BY time DESC LIMIT 1",
                user,
            )
            posts = await conn.fetchval(
                "SELECT count(*) FROM engagement_metrics WHERE user_id = $1 "
                "AND event_type = 'post_published'",
                user,
            )
            assert cadence == (pytest.approx(posts / 30 * 7) if posts else None)
        # Recomputing replaces the points instead of adding new ones.
        points = await conn.fetchval("SELECT count(*) FROM metric_aggregations")
        await maintenance.compute_aggregations(conn, at)
        assert await conn.fetchval("SELECT count(*) FROM metric_aggregations") == points
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
    s = dataclasses.replace(s, maintenance_interval=10, redis_db=_REDIS_DB)
    client = open_redis(s)
    await client.delete(maintenance.LOCK_KEY, METRICS_STREAM)
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
        # The run announced the user's current values, as stored.
        stored = {
            AGGREGATIONS[r["metric_name"]].metric: r["value"]
            for r in await conn.fetch("SELECT metric_name, value FROM metric_aggregations")
        }
        announced = await _announced(client)
        assert announced == {
            user: {m: v for m, v in stored.items() if v is not None} for user in announced
        }
        assert len(announced) == 1 and stored
    finally:
        await client.delete(maintenance.LOCK_KEY, METRICS_STREAM)
        await client.aclose()
        await conn.close()


async def _announced(client: redis.Redis) -> dict[str, dict[str, float | None]]:
    """Every update on ia:metrics, per user and metric (later entries win)."""
    out: dict[str, dict[str, float | None]] = {}
    entries: Any = await client.xrange(METRICS_STREAM)
    for _, fields in entries:
        assert fields[b"v"] == b"1" and b"touched" not in fields
        for u in metric_updates_decoder.decode(fields[b"updates"]):
            out.setdefault(u.user_id, {})[u.metric] = u.value
    return out


async def test_only_changed_current_values_are_announced(scratch_db: ScratchDb) -> None:
    s, conn = await _fresh(scratch_db)
    client = open_redis(dataclasses.replace(s, redis_db=_REDIS_DB))
    await client.delete(METRICS_STREAM)
    try:
        until = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        report = await seed(conn, users=3, days=20, seed=5, until=until)
        # As if the seeder had not backfilled the series: this run writes the first points.
        await conn.execute("DELETE FROM metric_aggregations")
        at = until + timedelta(minutes=30)
        first = await maintenance.compute_aggregations(conn, at)
        stored = {
            (r["user_id"], AGGREGATIONS[r["metric_name"]].metric): r["value"]
            for r in await conn.fetch("SELECT user_id, metric_name, value FROM metric_aggregations")
        }
        # First points: every non-null value is news (null is what a snapshot showed before).
        assert first.updates == {
            user: {m: v for (u, m), v in stored.items() if u == user and v is not None}
            for user in report.users
        }
        assert first.changed_users == set(report.users)
        assert all(len(values) >= 3 for values in first.updates.values())

        # The same data again: nothing to announce, no cache to invalidate.
        again = await maintenance.compute_aggregations(conn, at)
        assert again.updates == {} and again.changed_users == frozenset()

        # More likes for one user: only their engagement rates change.
        user, other = report.users[0], report.users[1]
        await conn.execute(
            "INSERT INTO engagement_metrics (time, user_id, event_id, event_type, likes) "
            "VALUES ($1, $2, 'extra-like', 'post_like', 500)",
            until - timedelta(hours=2),
            user,
        )
        await level(conn, {user: (until - timedelta(hours=2), until - timedelta(hours=2))})
        before = await client.get(generation_key(other))
        third = await maintenance.compute_aggregations(conn, at)
        assert set(third.updates) == {user}
        assert set(third.updates[user]) == {"engagementRate7d", "engagementRate30d"}
        for metric, value in third.updates[user].items():
            name = next(a.name for a in AGGREGATIONS.values() if a.metric == metric)
            new = await conn.fetchval(
                "SELECT value FROM metric_aggregations WHERE user_id = $1 AND metric_name = $2",
                user,
                name,
            )
            assert value == new and new > stored[(user, metric)]
        assert third.changed_users == {user}

        await publish_aggregations(client, third)
        assert await _announced(client) == third.updates
        assert await client.get(generation_key(user)) is not None  # invalidated
        assert await client.get(generation_key(other)) == before  # untouched
    finally:
        await client.delete(METRICS_STREAM)
        await client.aclose()
        await conn.close()


def test_announcements_are_split_into_bounded_entries() -> None:
    now = datetime.now(UTC)
    names = [a.metric for a in AGGREGATIONS.values()]
    updates: dict[str, dict[str, float | None]] = {
        f"u{i:04d}": {m: float(i) for m in names} for i in range(301)
    }
    run = AggregationRun(now, now, {}, updates, frozenset(updates))
    entries = metrics_entries(run)
    seen: dict[str, dict[str, float | None]] = {}
    for fields in entries:
        decoded = metric_updates_decoder.decode(fields["updates"])  # type: ignore[arg-type]
        assert 0 < len(decoded) <= UPDATES_PER_ENTRY
        in_entry = {u.user_id for u in decoded}
        assert not in_entry & set(seen)  # a user's updates are never split across entries
        for u in decoded:
            seen.setdefault(u.user_id, {})[u.metric] = u.value
    assert seen == updates
    assert len(entries) == -(-301 * len(names) // UPDATES_PER_ENTRY)
    assert metrics_entries(AggregationRun(now, now, {}, {}, frozenset())) == []


async def test_goals_are_settled_achieved_or_missed_and_their_answers_invalidated(
    scratch_db: ScratchDb,
) -> None:
    s, conn = await _fresh(scratch_db)
    client = open_redis(dataclasses.replace(s, redis_db=_REDIS_DB))
    try:
        until = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        report = await seed(conn, users=2, days=5, seed=9, until=until)
        user, other = report.users
        await conn.execute("DELETE FROM user_goals")
        now = datetime.now(UTC)
        connections = (await current_values(conn, [user], now))[user]["connections"]
        assert connections is not None and connections > 10
        past, future = now - timedelta(days=1), now + timedelta(days=10)
        goals = {
            # (target, baseline, starts_at, deadline, status) -> the status maintenance leaves
            "up-reached": (connections - 5, 1.0, past, future, "active"),
            "up-expired": (connections + 500, 1.0, past - timedelta(days=3), past, "active"),
            "up-pending": (connections + 500, 1.0, past, future, "active"),
            "down-reached": (connections + 1, connections + 50, past, future, "active"),
            "down-pending": (1.0, connections + 50, past, future, "active"),
            "cancelled": (connections - 5, 1.0, past, future, "cancelled"),
            "not-started": (connections - 5, 1.0, future, future + timedelta(days=1), "active"),
        }
        ids = {}
        for name, (target, baseline, starts, deadline, status) in goals.items():
            ids[name] = await conn.fetchval(
                "INSERT INTO user_goals (user_id, metric, target_value, baseline_value, "
                "starts_at, deadline, status) VALUES ($1, 'connections', $2, $3, $4, $5, $6) "
                "RETURNING id",
                user, target, baseline, starts, deadline, status,
            )  # fmt: skip
        await client.set(generation_key(user), b"before")
        await client.set(generation_key(other), b"before")

        out = await maintenance.run(conn, s, client)

        assert out["goals"] == {"achieved": 2, "missed": 1}
        rows = {
            r["id"]: r for r in await conn.fetch("SELECT id, status, achieved_at FROM user_goals")
        }
        want = {
            "up-reached": "achieved",
            "up-expired": "missed",
            "up-pending": "active",
            "down-reached": "achieved",
            "down-pending": "active",
            "cancelled": "cancelled",
            "not-started": "active",
        }
        assert {name: rows[ids[name]]["status"] for name in goals} == want
        assert rows[ids["up-reached"]]["achieved_at"] is not None
        assert rows[ids["up-expired"]]["achieved_at"] is None
        # The summary shows goals: that user's cached answers are stale now, the other's not.
        assert await client.get(generation_key(user)) != b"before"
        assert await client.get(generation_key(other)) == b"before"
        # Settled goals stay settled: a second run changes nothing.
        assert (await maintenance.run(conn, s, client))["goals"] == {"achieved": 0, "missed": 0}
    finally:
        await client.aclose()
        await conn.close()
