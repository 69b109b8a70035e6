"""The data lifecycle on each TimescaleDB edition, as a user meets it through the gateway:

- a late event older than every continuous aggregate's refresh window still reaches its
  buckets, within a bounded time and without anyone calling a refresh;
- chunks older than 7 days are compressed on the full edition (none can be on the Apache one),
  answers over them do not change, and a late event into a compressed chunk is stored and
  shows in the rollups;
- retention follows RETENTION_DAYS on both editions.

The instants here are relative to the server's clock on purpose: TimescaleDB's policies and
jobs measure their windows from `now()`. Every margin is at least a day from a boundary, so the
outcome does not depend on when the suite runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from migrations import runner
from pipeline import maintenance
from pipeline.worker import run_worker
from schemas.settings import Settings
from sinks.db import connect
from sinks.retention import retention_days
from sinks.rollups import ROLLUPS, edition, refresh, watermark
from tests.api_support import ApiEnv, api_env, iso, new_user
from tests.conftest import TEST_TIMESCALE_EDITION, ScratchDb

DAY = timedelta(days=1)
# How long a late event may take to reach its buckets: a worker batch, the rollup group's
# batch and the refreshes, on a busy 2-core machine.
SETTLE_S = 20.0


async def _fresh(scratch_db: ScratchDb) -> tuple[Settings, asyncpg.Connection]:
    s = await scratch_db()
    conn = await connect(s)
    await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    await runner.up(conn)
    assert await edition(conn) == TEST_TIMESCALE_EDITION
    return s, conn


@pytest.fixture
async def lifecycle(scratch_db: ScratchDb) -> AsyncIterator[tuple[ApiEnv, asyncpg.Connection]]:
    """A gateway and a worker (processor and rollup groups) on a database of their own, so
    compression and retention touch no other test's chunks; the API cache is off, so every
    answer is read afresh."""
    s, conn = await _fresh(scratch_db)
    async with api_env(dataclasses.replace(s, batch_max_wait_ms=20), api_cache_ttl=0) as env:
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(env.settings, stop))
        try:
            yield env, conn
        finally:
            stop.set()
            await worker
            await conn.close()


async def _post(env: ApiEnv, user: str, at: datetime, value: int, event_id: str) -> None:
    body = {"user_id": user, "type": "profile_view", "time": iso(at), "value": value}
    status, answer, _ = await env.call(
        "POST",
        "/ingest/event",
        "producer-1",
        "producer",
        params={"wait": "true"},
        json={**body, "event_id": event_id},
    )
    assert status == 200, answer


WIDTHS = ("5m", "1h", "1d")


async def _views(env: ApiEnv, user: str, at: datetime) -> dict[str, int]:
    """The user's profile views in the bucket of each width holding `at`, as the API answers."""
    out = {}
    for bucket in WIDTHS:
        status, body, _ = await env.get(
            "/api/v1/metrics/profile",
            user,
            "user",
            **{"from": iso(at), "to": iso(at + timedelta(seconds=1)), "bucket": bucket},
        )
        assert status == 200, body
        assert len(body["series"]) <= 1, body
        out[bucket] = sum(p["profileViews"] for p in body["series"])
    return out


async def _settled(env: ApiEnv, user: str, at: datetime, want: dict[str, int]) -> dict[str, int]:
    """The views once they equal `want`, or as they are after SETTLE_S."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        got = await _views(env, user, at)
        if got == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.2)


async def _materialise(conn: asyncpg.Connection, lo: datetime, hi: datetime) -> None:
    """What the refresh policies (full) or the rollup group (Apache) left for old data."""
    if await edition(conn) == "timescale":
        assert await refresh(conn, [(lo, hi)]) >= len(ROLLUPS)


async def test_a_late_event_past_every_refresh_window_reaches_its_buckets(
    lifecycle: tuple[ApiEnv, asyncpg.Connection],
) -> None:
    env, conn = lifecycle
    user = new_user("late")
    now = datetime.now(UTC)
    # 20 days back: older than the daily aggregate's 7-day refresh window, the widest.
    day = (now - 20 * DAY).replace(hour=0, minute=0, second=0, microsecond=0)
    at = day + timedelta(minutes=2)
    await _post(env, user, at, 3, "on-time")
    await _materialise(conn, day - DAY, now)
    assert await _settled(env, user, at, {"5m": 3, "1h": 3, "1d": 3}) == {"5m": 3, "1h": 3, "1d": 3}

    await _post(env, user, at + timedelta(seconds=30), 4, "late")
    # Nothing refreshed by the test: the rollup group must level the buckets itself.
    want = {"5m": 7, "1h": 7, "1d": 7}
    assert await _settled(env, user, at, want) == want
    if TEST_TIMESCALE_EDITION == "timescale":
        # The buckets are read from the materialisation, not computed at query time.
        for rollup in ("profile_metrics_5min", "profile_metrics_hourly", "profile_metrics_daily"):
            mark = await watermark(conn, rollup)
            assert mark is not None and mark > at, (rollup, mark)
    else:
        assert await watermark(conn, "profile_metrics_daily") is None
    stored = await conn.fetchval(
        "SELECT profile_views FROM profile_metrics_daily WHERE user_id = $1 AND bucket = $2",
        user,
        day,
    )
    assert stored == 7


_CHUNKS = """
SELECT count(*) FILTER (WHERE is_compressed) AS compressed,
       count(*) FILTER (WHERE NOT is_compressed AND range_end < now() - interval '7 days')
           AS old_plain,
       count(*) FILTER (WHERE is_compressed AND range_end > now() - interval '7 days')
           AS young_compressed
FROM timescaledb_information.chunks WHERE hypertable_name = $1
"""


async def _run_policies(conn: asyncpg.Connection, proc: str) -> int:
    jobs = await conn.fetch(
        "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = $1 ORDER BY 1", proc
    )
    for job in jobs:
        await conn.execute("CALL run_job($1)", job["job_id"])
    return len(jobs)


async def test_old_chunks_compress_answers_hold_and_late_events_still_land(
    lifecycle: tuple[ApiEnv, asyncpg.Connection],
) -> None:
    env, conn = lifecycle
    user = new_user("cmp")
    now = datetime.now(UTC)
    first = (now - 12 * DAY).replace(hour=0, minute=0, second=0, microsecond=0)
    for d in range(11):
        await _post(env, user, first + d * DAY + timedelta(hours=9), d + 1, f"day-{d}")
    await _materialise(conn, first - DAY, now)
    newest = {"5m": 11, "1h": 11, "1d": 11}
    assert await _settled(env, user, first + 10 * DAY + timedelta(hours=9), newest) == newest
    before = await env.get(
        "/api/v1/metrics/profile",
        user,
        "user",
        **{"from": iso(first), "to": iso(first + 11 * DAY), "bucket": "1d"},
    )
    assert before[0] == 200 and [p["profileViews"] for p in before[1]["series"]] == list(
        range(1, 12)
    )

    if TEST_TIMESCALE_EDITION == "timescale":
        assert await _run_policies(conn, "policy_compression") == 6
        for table in ("profile_metrics", "real_time_events"):
            chunks = await conn.fetchrow(_CHUNKS, table)
            assert chunks is not None
            assert chunks["compressed"] >= 1, table
            assert chunks["old_plain"] == 0 and chunks["young_compressed"] == 0, dict(chunks)
        assert (await maintenance.report(conn))["compression"] == "policy: after 7 days"
    else:
        assert await _run_policies(conn, "policy_compression") == 0
        chunks = await conn.fetchrow(_CHUNKS, "profile_metrics")
        assert chunks is not None
        assert chunks["compressed"] == 0 and chunks["old_plain"] >= 1
        assert (await maintenance.report(conn))["compression"] == "unavailable (apache)"
        with pytest.raises(asyncpg.PostgresError, match="apache"):
            await conn.execute("ALTER TABLE profile_metrics SET (timescaledb.compress)")

    after = await env.get(
        "/api/v1/metrics/profile",
        user,
        "user",
        **{"from": iso(first), "to": iso(first + 11 * DAY), "bucket": "1d"},
    )
    assert after[1]["series"] == before[1]["series"]

    # Ten days back: into a compressed chunk on the full edition. That day held 3 views.
    late = first + 2 * DAY + timedelta(hours=10)
    await _post(env, user, late, 100, "late-into-compressed")
    stored = await conn.fetchval(
        "SELECT count(*) FROM profile_metrics WHERE user_id = $1 AND event_id = $2",
        user,
        "late-into-compressed",
    )
    assert stored == 1
    want = {"5m": 100, "1h": 100, "1d": 103}
    assert await _settled(env, user, late, want) == want


@pytest.mark.parametrize("days", [30, 90])
async def test_retention_follows_retention_days(scratch_db: ScratchDb, days: int) -> None:
    s, conn = await _fresh(scratch_db)
    s = dataclasses.replace(s, retention_days=days)
    try:
        now = datetime.now(UTC)
        ages = (120, 100, 95, 80, 40, 20, 1)
        await conn.executemany(
            "INSERT INTO real_time_events (time, user_id, event_id, event_type, received_at) "
            "VALUES ($1, 'ret-user', $2, 'profile_view', $1)",
            [(now - age * DAY, f"e{age}") for age in ages],
        )
        out = await maintenance.run(conn, s)
        if TEST_TIMESCALE_EDITION == "timescale":
            assert out["dropped_chunks"] == {}
            # The migration made them 90 days (the daily rollup 730, which stays).
            moved = {r: d for r, d in retention_days(days).items() if r != "profile_metrics_daily"}
            assert out["retention_policies_changed"] == (moved if days != 90 else {})
            again = await maintenance.run(conn, s)
            assert again["retention_policies_changed"] == {}
            windows = {
                r["hypertable_name"]: r["drop_after"]
                for r in await conn.fetch(
                    "SELECT hypertable_name, config->>'drop_after' AS drop_after "
                    "FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'"
                )
            }
            assert windows["real_time_events"] == f"{days} days"
            assert windows["profile_metrics"] == f"{days} days"
            assert await _run_policies(conn, "policy_retention") == 10
        else:
            assert out["retention_policies_changed"] == {}
            assert out["dropped_chunks"]["real_time_events"] >= 1
        left = [
            r["event_id"]
            for r in await conn.fetch("SELECT event_id FROM real_time_events ORDER BY time")
        ]
        assert left == [f"e{age}" for age in ages if age < days]
    finally:
        await conn.close()
