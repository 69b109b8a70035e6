"""Maintenance: retention drops old chunks only, the edition's lifecycle is reported, derived
aggregations match raw data, only their changed current values are announced on `ia:metrics`
(in bounded entries, after invalidating those users' cached answers), and the schedule runs on
one replica at a time."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis

from migrations import runner
from pipeline import maintenance
from pipeline.worker import open_redis
from schemas.aggregations import AGGREGATIONS, CURRENT_LOOKBACK, UPDATES_PER_ENTRY
from schemas.entries import metric_updates_decoder
from schemas.settings import Settings
from schemas.streams import METRICS_STREAM
from seeder.generate import seed
from sinks.aggregations import AggregationRun, metrics_entries, publish_aggregations
from sinks.cache_generations import generation_key
from sinks.db import connect
from sinks.queries.aggregation_values import aggregation_values
from sinks.queries.current_values import current_values
from sinks.rollups import level
from tests.conftest import ScratchDb

# The schedule's and the announcement tests' Redis db: other suites flush db 15 meanwhile.
_REDIS_DB = 9


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# The instants maintenance runs at here: never the wall clock, so an outcome cannot depend on
# the day the suite runs. Midnight, noon and a minute before midnight; a month's last day
# (January, February) and the first of the next; a Monday at 00:00 (the start of a week);
# and 2026-11-30 12:00 and 2026-12-02 (any hour), where a seeded user's engagement has left
# the 7-day window (the instants CI once failed at).
INSTANTS = [
    _utc("2026-01-31T23:59"),
    _utc("2026-02-28T23:59"),
    _utc("2026-03-01T00:00"),
    _utc("2026-11-30T00:00"),  # Monday
    _utc("2026-11-30T12:00"),
    _utc("2026-12-02T00:00"),
    _utc("2026-12-02T12:00"),
    _utc("2026-12-02T23:59"),
    _utc("2026-12-03T12:00"),
]
# Fewer, for the tests that seed 20 days (about 3 s each, mostly creating chunks): a Monday
# midnight, the last minute of February and the first of March, 2026-12-02 at noon and a
# minute before midnight, and the day after, when every seeded user is in the window again.
SEEDED_INSTANTS = [
    _utc("2026-11-30T00:00"),
    _utc("2026-02-28T23:59"),
    _utc("2026-03-01T00:00"),
    _utc("2026-12-02T12:00"),
    _utc("2026-12-02T23:59"),
    _utc("2026-12-03T12:00"),
]
# Days on which seed 11's job seeker posted, but not in the 7 days before (any hour).
_JOB_SEEKER_OUT = (date(2026, 11, 30), date(2026, 12, 2))


async def _fresh(scratch_db: ScratchDb) -> tuple[Settings, asyncpg.Connection]:
    s = await scratch_db()
    conn = await connect(s)
    await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    await runner.up(conn)
    return s, conn


@pytest.mark.parametrize("now", INSTANTS, ids=str)
async def test_retention_drops_chunks_older_than_the_window_and_keeps_the_rest(
    scratch_db: ScratchDb, now: datetime
) -> None:
    s, conn = await _fresh(scratch_db)
    try:
        # 6-hour chunks: a row a day beyond RETENTION_DAYS (90) is in a chunk that ended
        # before the cutoff, one a day within it in a chunk that ends after it.
        assert s.retention_days == 90
        rows = [
            (now - timedelta(days=days), "ret-user", f"e{days}", "profile_view")
            for days in (120, 100, 95, 91, 89, 80, 1)
        ]
        await conn.executemany(
            "INSERT INTO real_time_events (time, user_id, event_id, event_type, received_at) "
            "VALUES ($1, $2, $3, $4, $1)",
            rows,
        )
        out = await maintenance.run(conn, s, now=now)
        left = [
            r["event_id"]
            for r in await conn.fetch("SELECT event_id FROM real_time_events ORDER BY time")
        ]
        if out["edition"] == "timescale":
            # Policies drop chunks there, already at RETENTION_DAYS (tests/test_lifecycle.py
            # runs them); maintenance itself drops nothing and changes no window.
            assert out["retention"] == "policies"
            assert out["dropped_chunks"] == {} and out["retention_policies_changed"] == {}
            assert len(left) == len(rows)
        else:
            assert out["dropped_chunks"]["real_time_events"] == 4
            assert left == ["e89", "e80", "e1"]
            assert out["compression"] == "unavailable (apache)"
            assert out["chunks"]["real_time_events"]["compressed"] == 0
    finally:
        await conn.close()


# Each series' rule over raw rows: the rows whose hour starts in [at - 7 days, at).
_RATE_7D = """
SELECT count(*) AS n,
       (sum(likes) + sum(comments) + sum(shares))::float8 / NULLIF(sum(impressions), 0) AS rate
FROM engagement_metrics WHERE user_id = $1
  AND date_trunc('hour', time) >= $2::timestamptz - interval '7 days'
  AND date_trunc('hour', time) < $2
"""
_POINT = """
SELECT value, sample_count FROM metric_aggregations
WHERE user_id = $1 AND metric_name = $2 AND time = date_trunc('hour', $3::timestamptz)
"""


async def _assert_7d_rates_match_raw(
    conn: asyncpg.Connection, users: list[str], at: datetime
) -> list[str]:
    """Each user's engagement_rate_7d point stamped at `at`'s hour equals the rate over the raw
    rows of its window; a user without rows there has no point (their newest one is older).
    Returns the users without a point."""
    absent = []
    for user in users:
        raw = await conn.fetchrow(_RATE_7D, user, at)
        point = await conn.fetchrow(_POINT, user, "engagement_rate_7d", at)
        assert raw is not None
        if raw["n"] == 0:
            assert point is None, (user, at)
            absent.append(user)
        else:
            assert point is not None, (user, at)
            assert point["value"] == (None if raw["rate"] is None else pytest.approx(raw["rate"]))
    return absent


@pytest.mark.parametrize("until", SEEDED_INSTANTS, ids=str)
async def test_aggregations_match_raw_data_and_report_shows_fresh_rollups(
    scratch_db: ScratchDb, until: datetime
) -> None:
    s, conn = await _fresh(scratch_db)
    try:
        report = await seed(conn, users=3, days=20, seed=11, until=until)
        # The seeder's last point is computed at `until` itself, on the hour or not.
        before = await _assert_7d_rates_match_raw(conn, report.users, until)
        at = until + timedelta(minutes=30)
        written = (await maintenance.compute_aggregations(conn, at)).written
        assert set(written) == set(AGGREGATIONS)  # every series has its SQL
        assert written["profile_views_wow"] == written["connection_growth_rate_30d"] == 3
        absent = await _assert_7d_rates_match_raw(conn, report.users, at)
        assert before == absent
        assert written["engagement_rate_7d"] == 3 - len(absent)
        if until.date() in _JOB_SEEKER_OUT:
            # What CI once failed on: the job seeker's newest point is days old (the seeder's,
            # 0.0 from a window with impressions and no likes), and by the documented rule
            # (older than CURRENT_LOOKBACK) it is not their current value.
            job_seeker = report.users[1]
            assert absent == [job_seeker]
            newest = await conn.fetchrow(
                "SELECT time, value FROM metric_aggregations WHERE user_id = $1 "
                "AND metric_name = 'engagement_rate_7d' ORDER BY time DESC LIMIT 1",
                job_seeker,
            )
            assert newest is not None and newest["time"] <= at - CURRENT_LOOKBACK
            current = await aggregation_values(conn, [job_seeker], at)
            assert current[job_seeker]["engagementRate7d"] is None
        for user in report.users:
            cadence = await conn.fetchrow(_POINT, user, "posting_cadence_30d", at)
            posts = await conn.fetchval(
                "SELECT count(*) FROM engagement_metrics WHERE user_id = $1 "
                "AND event_type = 'post_published'",
                user,
            )
            # 20 days seeded: every post is in the 30-day window; no post, no row, no point.
            value = None if cadence is None else cadence["value"]
            assert value == (pytest.approx(posts / 30 * 7) if posts else None)
        # Recomputing replaces the points instead of adding new ones.
        points = await conn.fetchval("SELECT count(*) FROM metric_aggregations")
        await maintenance.compute_aggregations(conn, at)
        assert await conn.fetchval("SELECT count(*) FROM metric_aggregations") == points
        status = await maintenance.report(conn)
        for rollup, fresh in status["rollup_freshness"].items():
            assert fresh["behind_seconds"] == 0.0, rollup
    finally:
        await conn.close()


@pytest.mark.parametrize("now", [INSTANTS[3], INSTANTS[7]], ids=str)
async def test_scheduled_maintenance_runs_on_one_replica_at_a_time(
    scratch_db: ScratchDb, caplog: pytest.LogCaptureFixture, now: datetime
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.maintenance")
    s, conn = await _fresh(scratch_db)
    s = dataclasses.replace(s, maintenance_interval=10, redis_db=_REDIS_DB)
    client = open_redis(s)
    await client.delete(maintenance.LOCK_KEY, METRICS_STREAM)
    try:
        await seed(conn, users=1, days=2, seed=1, until=now)
        await conn.execute("DELETE FROM metric_aggregations")
        stop = asyncio.Event()
        replicas = [
            asyncio.create_task(maintenance.run_scheduled(s, client, stop, clock=lambda: now))
            for _ in range(2)
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
        stamps = await conn.fetch("SELECT DISTINCT time FROM metric_aggregations")
        assert [r["time"] for r in stamps] == [now.replace(minute=0)]  # as of the clock
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


@pytest.mark.parametrize("until", SEEDED_INSTANTS[:2], ids=str)
async def test_only_changed_current_values_are_announced(
    scratch_db: ScratchDb, until: datetime
) -> None:
    s, conn = await _fresh(scratch_db)
    client = open_redis(dataclasses.replace(s, redis_db=_REDIS_DB))
    await client.delete(METRICS_STREAM)
    try:
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
    now = INSTANTS[0]
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


@pytest.mark.parametrize("now", INSTANTS, ids=str)
async def test_goals_are_settled_achieved_or_missed_and_their_answers_invalidated(
    scratch_db: ScratchDb, now: datetime
) -> None:
    s, conn = await _fresh(scratch_db)
    client = open_redis(dataclasses.replace(s, redis_db=_REDIS_DB))
    try:
        report = await seed(conn, users=2, days=5, seed=9, until=now)
        user, other = report.users
        await conn.execute("DELETE FROM user_goals")
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
            # Due a minute after the run: not missed yet, whatever the day or month.
            "due-soon": (connections + 500, 1.0, past, now + timedelta(minutes=1), "active"),
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

        out = await maintenance.run(conn, s, client, now)

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
            "due-soon": "active",
        }
        assert {name: rows[ids[name]]["status"] for name in goals} == want
        assert rows[ids["up-reached"]]["achieved_at"] == now  # as of the run's instant
        assert rows[ids["up-expired"]]["achieved_at"] is None
        # The summary shows goals: that user's cached answers are stale now, the other's not.
        assert await client.get(generation_key(user)) != b"before"
        assert await client.get(generation_key(other)) == b"before"
        # Settled goals stay settled: a second run changes nothing.
        assert (await maintenance.run(conn, s, client, now))["goals"] == {
            "achieved": 0,
            "missed": 0,
        }
    finally:
        await client.aclose()
        await conn.close()
