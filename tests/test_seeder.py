"""The development seeder: deterministic, consistent rollups, `clear` removes only its own."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from migrations import runner
from schemas.settings import Settings
from seeder.generate import clear, generate_user, seed, seed_status, user_ids
from sinks.db import connect
from tests.conftest import ScratchDb
from tests.test_rollups import _assert_rollups_equal_raw

UNTIL = datetime(2026, 11, 1, tzinfo=UTC)


async def _fresh(scratch_db: ScratchDb) -> tuple[Settings, asyncpg.Connection]:
    s = await scratch_db()
    conn = await connect(s)
    await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    await runner.up(conn)
    return s, conn


async def _fingerprint(conn: asyncpg.Connection) -> str:
    digest = hashlib.sha256()
    for table in ("profile_metrics", "engagement_metrics", "real_time_events"):
        for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY user_id, time, event_id"):
            digest.update(orjson.dumps([str(v) for k, v in r.items() if k != "ingested_at"]))
    return digest.hexdigest()


def test_generation_is_deterministic_per_seed() -> None:
    a = generate_user(2, "demo-founder-7-2", 7, 30, UNTIL)
    b = generate_user(2, "demo-founder-7-2", 7, 30, UNTIL)
    c = generate_user(2, "demo-founder-8-2", 8, 30, UNTIL)
    assert (a.profile, a.engagement, a.feed) == (b.profile, b.engagement, b.feed)
    assert [r[4:] for r in a.profile] != [r[4:] for r in c.profile]


async def test_seed_loads_personas_with_consistent_rollups_and_is_repeatable(
    scratch_db: ScratchDb,
) -> None:
    _, conn = await _fresh(scratch_db)
    try:
        report = await seed(conn, users=5, days=30, seed=3, until=UNTIL)
        assert report.users == user_ids(5, 3)
        assert len({u.split("-")[1] for u in report.users}) == 5  # five distinct personas
        assert all(n > 1000 for n in report.rows.values()), report.rows
        counted = await conn.fetchval("SELECT count(*) FROM real_time_events")
        assert counted == report.rows["real_time_events"]
        # The viral post: the founder's best post has far more impressions than its median one.
        per_post = [
            r["n"]
            for r in await conn.fetch(
                "SELECT sum(impressions) AS n FROM engagement_metrics "
                "WHERE user_id = $1 GROUP BY post_id ORDER BY 1",
                report.users[2],
            )
        ]
        assert per_post[-1] > 4 * per_post[len(per_post) // 2]
        assert await conn.fetchval("SELECT count(*) FROM user_goals") == 10
        assert await conn.fetchval("SELECT count(*) FROM alert_configs") == 10
        assert await _assert_rollups_equal_raw(conn, report.users) > 100
        # A point of each derived series per day of history, equal to SQL over the raw rows.
        founder = report.users[2]
        cadence = await conn.fetch(
            "SELECT time, value FROM metric_aggregations WHERE user_id = $1 "
            "AND metric_name = 'posting_cadence_30d' ORDER BY time",
            founder,
        )
        # From the first day the founder's 30-day window holds a post, to UNTIL.
        assert len(cadence) >= 25 and cadence[-1]["time"] == UNTIL
        posts = await conn.fetchval(
            "SELECT sum(posts_published) FROM engagement_metrics WHERE user_id = $1 "
            "AND time >= $2::timestamptz - interval '30 days' AND time < $2",
            founder,
            UNTIL,
        )
        assert cadence[-1]["value"] == pytest.approx(float(posts) / 30 * 7)
        first = await _fingerprint(conn)

        await clear(conn)
        assert await conn.fetchval("SELECT count(*) FROM real_time_events") == 0
        await seed(conn, users=5, days=30, seed=3, until=UNTIL)
        assert await _fingerprint(conn) == first
    finally:
        await conn.close()


async def test_clear_removes_only_seeded_rows(scratch_db: ScratchDb) -> None:
    _, conn = await _fresh(scratch_db)
    try:
        await seed(conn, users=2, days=3, seed=5, until=UNTIL)
        demo = user_ids(2, 5)[0]
        real = [
            (UNTIL, "real-user", "real-1", "profile_view"),
            (UNTIL, demo, "real-2", "profile_view"),  # a real event for a demo user id
        ]
        await conn.executemany(
            "INSERT INTO real_time_events (time, user_id, event_id, event_type, received_at) "
            "VALUES ($1, $2, $3, $4, $1)",
            real,
        )
        await conn.execute(
            "INSERT INTO user_goals (user_id, metric, target_value, deadline, starts_at) "
            "VALUES ('real-user', 'connections', 10, $1, $2)",
            UNTIL + timedelta(days=1),
            UNTIL,
        )
        assert len(await seed_status(conn)) == 1
        removed = await clear(conn)
        assert removed["real_time_events"] > 0
        left = await conn.fetch("SELECT event_id FROM real_time_events ORDER BY 1")
        assert [r["event_id"] for r in left] == ["real-1", "real-2"]
        assert await conn.fetchval("SELECT count(*) FROM user_goals") == 1
        assert await conn.fetchval("SELECT count(*) FROM profile_metrics_daily") == 0
        assert await seed_status(conn) == []
    finally:
        await conn.close()


def test_seeding_is_refused_in_production() -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("APP_", "JWT_"))},
        "APP_ENV": "production",
        "JWT_SECRET": "p" * 40,
    }
    for action in ("load", "clear"):
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "seed", action],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 1
        assert "refused when APP_ENV=production" in proc.stderr
