"""Rollups equal the raw data: after the pipeline, after late events, after a redelivery; the
maintenance task's announcements on the same stream are acknowledged without a recompute.

The rollup group runs on both editions: on the full one it refreshes the continuous
aggregates over what a batch touched (late events older than a refresh policy's window
included), on the Apache one it recomputes the rollup tables. These checks read the rollups as
the API does and never refresh anything themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis

from pipeline.runner import Delivery
from pipeline.stages.rollup import RollupStage
from pipeline.worker import open_redis, run_worker
from schemas.aggregations import AGGREGATIONS
from schemas.events import EVENT_TYPES
from schemas.settings import Settings
from schemas.streams import DLQ_STREAM, METRICS_STREAM
from sinks.aggregations import AggregationRun, metrics_entries
from sinks.cache_generations import generation_key
from sinks.db import connect, create_pool
from sinks.rollups import ROLLUPS
from tests.streams_helpers import append, make_event, unprocessed

PROFILE_COLUMNS: tuple[str, ...] = (
    "profile_views",
    "search_appearances",
    "connections_added",
    "connections_removed",
    "messages_received",
    "total_profile_views",
    "connections",
    "followers",
    "profile_completeness",
    "events",
)
ENGAGEMENT_COLUMNS: tuple[str, ...] = (
    "posts_published",
    "impressions",
    "likes",
    "comments",
    "shares",
    "engagement_rate",
    "events",
)
# Every event type, in a fixed order so a seeded generator draws the same sequence.
TYPES = sorted(EVENT_TYPES)


@pytest.fixture
async def env(
    migrated: Settings,
) -> AsyncIterator[tuple[Settings, redis.Redis, asyncpg.Connection]]:
    s = dataclasses.replace(migrated, batch_max_wait_ms=20, redis_db=9)
    client = open_redis(s)
    await client.flushdb()
    conn = await connect(s)
    yield s, client, conn
    await conn.close()
    await client.flushdb()
    await client.aclose()


def _events(user: str, rng: random.Random, n: int, start_us: int, span_us: int) -> list[Any]:
    out = []
    for _ in range(n):
        kind = rng.choice(TYPES)
        props: dict[str, Any] = {}
        value = float(rng.randrange(1, 20))
        if kind == "profile_snapshot":
            props = {
                "connections": rng.randrange(10, 900),
                "followers": rng.randrange(0, 50),
                "profile_completeness": rng.randrange(0, 101),
                "profile_views": 5,
            }
            value = 1
        elif kind == "profile_update":
            props = {"profile_completeness": rng.randrange(0, 101)}
        out.append(
            make_event(
                user, kind, value=value, time_us=start_us + rng.randrange(span_us), properties=props
            )
        )
    return out


async def _settle(s: Settings, client: redis.Redis) -> None:
    """Run the worker (processor and rollup groups) until both have nothing left."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(s, stop))
    try:
        async with asyncio.timeout(30):
            while True:
                await asyncio.sleep(0.1)
                backlog = await unprocessed(client, s)
                groups = await client.xinfo_groups(METRICS_STREAM) if backlog == 0 else []
                rollup = [g for g in groups if g["name"] == b"rollup"]
                if backlog == 0 and (
                    not rollup or (rollup[0]["lag"] == 0 and rollup[0]["pending"] == 0)
                ):
                    break
    finally:
        stop.set()
        await task


async def _assert_rollups_equal_raw(conn: asyncpg.Connection, users: list[str]) -> int:
    """Read as the API reads them: on the full edition, materialised buckets below each
    aggregate's watermark and real-time ones above it, with nothing refreshed here."""
    checked = 0
    for rollup, (width, source) in ROLLUPS.items():
        if source == "profile_metrics":
            cols = PROFILE_COLUMNS
            expected_sql = f"""
                SELECT time_bucket($2::interval, time) AS bucket,
                  sum(profile_views) AS profile_views,
                  sum(search_appearances) AS search_appearances,
                  sum(connections_added) AS connections_added,
                  sum(connections_removed) AS connections_removed,
                  sum(messages_received) AS messages_received,
                  (array_agg(total_profile_views ORDER BY time DESC)
                     FILTER (WHERE total_profile_views IS NOT NULL))[1] AS total_profile_views,
                  (array_agg(connections ORDER BY time DESC)
                     FILTER (WHERE connections IS NOT NULL))[1] AS connections,
                  (array_agg(followers ORDER BY time DESC)
                     FILTER (WHERE followers IS NOT NULL))[1] AS followers,
                  (array_agg(profile_completeness ORDER BY time DESC)
                     FILTER (WHERE profile_completeness IS NOT NULL))[1] AS profile_completeness,
                  count(*) AS events
                FROM {source} WHERE user_id = $1 GROUP BY 1 ORDER BY 1"""
        else:
            cols = ENGAGEMENT_COLUMNS
            expected_sql = f"""
                SELECT time_bucket($2::interval, time) AS bucket,
                  sum(posts_published) AS posts_published, sum(impressions) AS impressions,
                  sum(likes) AS likes, sum(comments) AS comments, sum(shares) AS shares,
                  (sum(likes) + sum(comments) + sum(shares))::float8
                    / NULLIF(sum(impressions), 0) AS engagement_rate,
                  count(*) AS events
                FROM {source} WHERE user_id = $1 GROUP BY 1 ORDER BY 1"""
        for user in users:
            expected = await conn.fetch(expected_sql, user, width)
            actual = await conn.fetch(
                f"SELECT bucket, {', '.join(cols)} FROM {rollup} WHERE user_id = $1 ORDER BY 1",
                user,
            )
            assert len(actual) == len(expected), (rollup, user)
            for a, e in zip(actual, expected, strict=True):
                assert a["bucket"] == e["bucket"]
                for col in cols:
                    if isinstance(e[col], float):
                        assert a[col] == pytest.approx(e[col]), (rollup, col)
                    else:
                        assert a[col] == e[col], (rollup, a["bucket"], col)
                checked += 1
    return checked


async def test_rollups_equal_raw_after_late_events_and_redelivery(
    env: tuple[Settings, redis.Redis, asyncpg.Connection],
) -> None:
    s, client, conn = env
    rng = random.Random(42)
    users = [f"roll-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    now_us = int(time.time() * 1e6)
    day_us = 86_400_000_000
    recent = [e for u in users for e in _events(u, rng, 150, now_us - 2 * day_us, 2 * day_us)]
    await append(client, s, recent)
    await _settle(s, client)
    checked = await _assert_rollups_equal_raw(conn, users)
    assert checked > 50

    # Late events: days older than anything stored so far, in buckets that already exist.
    late = [e for u in users for e in _events(u, rng, 40, now_us - 10 * day_us, 9 * day_us)]
    await append(client, s, late)
    await _settle(s, client)
    await _assert_rollups_equal_raw(conn, users)

    # A redelivery: the same entries again. Raw rows stay single, rollups unchanged.
    before = await conn.fetch(
        "SELECT * FROM profile_metrics_daily WHERE user_id = ANY($1) ORDER BY 1, 2", users
    )
    await append(client, s, recent[:100])
    await _settle(s, client)
    after = await conn.fetch(
        "SELECT * FROM profile_metrics_daily WHERE user_id = ANY($1) ORDER BY 1, 2", users
    )
    assert [tuple(r) for r in after] == [tuple(r) for r in before]
    await _assert_rollups_equal_raw(conn, users)


async def test_announcements_of_derived_values_are_acknowledged_without_a_recompute(
    env: tuple[Settings, redis.Redis, asyncpg.Connection],
) -> None:
    """The maintenance task's entries carry no `touched`: the rollup group must neither fail on
    them (no dead letter, nothing left pending) nor recompute or invalidate anything."""
    s, client, conn = env
    user, other = f"roll-{uuid.uuid4().hex[:6]}", f"roll-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    run = AggregationRun(
        now, now, {}, {user: {a.metric: 0.5 for a in AGGREGATIONS.values()}}, frozenset({user})
    )
    [fields] = metrics_entries(run)
    entry_id: Any = await client.xadd(METRICS_STREAM, fields)
    stored: Any = await client.xrange(METRICS_STREAM, min=entry_id, max=entry_id)
    delivery = Delivery(METRICS_STREAM, entry_id.decode(), list(stored[0][1].items()))
    pool = await create_pool(s)
    try:
        assert await RollupStage(pool, client)([delivery]) == []
    finally:
        await pool.close()
    assert await client.get(generation_key(user)) is None

    # Through the worker, between processor entries: the group passes it and goes on.
    rng = random.Random(3)
    now_us = int(time.time() * 1e6)
    await append(client, s, _events(other, rng, 30, now_us - 86_400_000_000, 86_400_000_000))
    await _settle(s, client)
    assert await client.xlen(DLQ_STREAM) == 0
    await _assert_rollups_equal_raw(conn, [other])
    for rollup in ROLLUPS:
        assert not await conn.fetchval(f"SELECT count(*) FROM {rollup} WHERE user_id = $1", user)
