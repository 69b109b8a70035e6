"""The processor group end to end on real Redis and TimescaleDB: entries in, rows out."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as redis

from pipeline.trimming import safe_trim_floor, trim_metrics_stream
from pipeline.worker import open_redis, run_worker
from schemas.settings import Settings
from schemas.streams import (
    DLQ_STREAM,
    METRICS_STREAM,
    PROCESSOR_GROUP,
    events_stream,
    partition_of,
)
from sinks.db import connect
from tests.streams_helpers import append, make_event, read_stream, unprocessed


@pytest.fixture
async def env(
    migrated: Settings,
) -> AsyncIterator[tuple[Settings, redis.Redis, asyncpg.Connection]]:
    s = dataclasses.replace(migrated, batch_max_wait_ms=20, claim_idle_ms=500)
    client = open_redis(s)
    await client.flushdb()
    conn = await connect(s)
    yield s, client, conn
    await conn.close()
    await client.flushdb()
    await client.aclose()


async def _drain(s: Settings, client: redis.Redis, limit_s: float = 15.0) -> None:
    """Run a worker until every partition's backlog is acknowledged."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(s, stop))
    try:
        async with asyncio.timeout(limit_s):
            while True:
                await asyncio.sleep(0.05)
                if await unprocessed(client, s) == 0:
                    break
    finally:
        stop.set()
        await task


async def _count(conn: asyncpg.Connection, table: str, user: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1", user))


async def test_events_land_in_their_tables_once_and_metrics_are_published(
    env: tuple[Settings, redis.Redis, asyncpg.Connection],
) -> None:
    s, client, conn = env
    user = f"u-{uuid.uuid4().hex[:8]}"
    events = [
        make_event(
            user,
            "profile_snapshot",
            properties={"connections": 100, "followers": 7, "profile_completeness": 80},
        ),
        make_event(user, "profile_view", value=3),
        make_event(user, "connection_added", value=2),
        make_event(user, "post_impression", value=200, properties={"post_id": "p1"}),
        make_event(user, "post_like", value=10, properties={"post_id": "p1"}),
    ]
    await append(client, s, events)
    await _drain(s, client)

    assert await _count(conn, "real_time_events", user) == 5
    assert await _count(conn, "profile_metrics", user) == 3
    assert await _count(conn, "engagement_metrics", user) == 2
    row: Any = await conn.fetchrow(
        "SELECT sum(profile_views) AS v, max(connections) AS c "
        "FROM profile_metrics WHERE user_id = $1",
        user,
    )
    assert (row["v"], row["c"]) == (3, 100)

    entries = await read_stream(client, METRICS_STREAM)
    updates: list[dict[str, Any]] = []
    for _, fields in entries:
        updates += orjson.loads(fields[b"updates"])
    latest = {u["metric"]: u["value"] for u in updates if u["userId"] == user}
    assert latest["connections"] == 102
    assert latest["profileViews"] == 3
    assert latest["engagementRate"] == pytest.approx(0.05)
    assert 0 < latest["influenceScore"] < 100
    assert all("asOf" in u and "committedAt" in u for u in updates)


async def test_duplicates_in_a_batch_across_batches_and_redelivery_store_one_row(
    env: tuple[Settings, redis.Redis, asyncpg.Connection],
) -> None:
    s, client, conn = env
    user = f"u-{uuid.uuid4().hex[:8]}"
    e = make_event(user, "profile_view", event_id="same-id")
    other = make_event(user, "profile_view")
    # Two entries carrying the same event (a producer retry past the dedup window).
    await append(client, s, [e, other])
    await append(client, s, [e])
    await _drain(s, client)
    # A redelivery: the same entry appended again after it was stored.
    await append(client, s, [e, other])
    await _drain(s, client)
    assert await _count(conn, "real_time_events", user) == 2
    assert await _count(conn, "profile_metrics", user) == 2


async def test_invalid_events_go_to_the_dlq_with_a_reason_and_the_rest_is_stored(
    env: tuple[Settings, redis.Redis, asyncpg.Connection],
) -> None:
    s, client, conn = env
    user = f"u-{uuid.uuid4().hex[:8]}"
    bad_snapshot = make_event(user, "profile_snapshot", properties={"connections": "many"})
    fractional = make_event(user, "profile_view", value=1.5)
    good = make_event(user, "profile_view")
    await append(client, s, [bad_snapshot, fractional, good])
    await _drain(s, client)
    assert await _count(conn, "real_time_events", user) == 1
    dlq = await read_stream(client, DLQ_STREAM)
    reasons = sorted(f[b"reason"].decode() for _, f in dlq)
    assert len(reasons) == 2
    assert any("properties.connections" in r for r in reasons)
    assert any("whole" in r for r in reasons)
    assert all(f[b"stage"] == b"validate" and f[b"payload"] for _, f in dlq)


async def test_acknowledged_entries_are_trimmed_pending_ones_are_not(
    env: tuple[Settings, redis.Redis, asyncpg.Connection],
) -> None:
    s, client, conn = env
    user = f"u-{uuid.uuid4().hex[:8]}"
    await append(client, s, [make_event(user, "profile_view") for _ in range(3)])
    await _drain(s, client)
    stream = events_stream(partition_of(user, s.stream_partitions))
    floor = await safe_trim_floor(client, stream)
    assert floor is not None
    await client.xtrim(stream, minid=floor, approximate=False)
    assert await client.xlen(stream) == 0
    # A new entry read but not acknowledged must survive a trim.
    await append(client, s, [make_event(user, "profile_view")])
    await client.xreadgroup(PROCESSOR_GROUP, "test-consumer", {stream: ">"}, count=10)
    floor = await safe_trim_floor(client, stream)
    assert floor is not None
    await client.xtrim(stream, minid=floor, approximate=False)
    assert await client.xlen(stream) == 1


async def test_worker_survives_its_streams_being_deleted_under_it(
    env: tuple[Settings, redis.Redis, asyncpg.Connection],
) -> None:
    s, client, conn = env
    user = f"u-{uuid.uuid4().hex[:8]}"
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(s, stop))
    try:
        await asyncio.sleep(0.5)  # blocked in XREADGROUP by now
        await client.flushdb()
        await append(client, s, [make_event(user, "profile_view")])
        async with asyncio.timeout(15):
            while await _count(conn, "real_time_events", user) == 0:
                await asyncio.sleep(0.05)
        assert not task.done()
    finally:
        stop.set()
        await task


async def test_metrics_stream_keeps_its_replay_window_and_unacknowledged_entries(
    env: tuple[Settings, redis.Redis, asyncpg.Connection],
) -> None:
    _, client, _ = env
    old_ms = int(time.time() * 1000) - 7_200_000
    for i in range(3):  # two hours old: outside a one-hour window
        await client.xadd(METRICS_STREAM, {"v": 1}, id=f"{old_ms + i}-0")
    await client.xadd(METRICS_STREAM, {"v": 1})  # fresh
    assert await trim_metrics_stream(client, 3600) == 3
    assert await client.xlen(METRICS_STREAM) == 1

    # A group that has not read the old entries protects them, whatever their age.
    await client.delete(METRICS_STREAM)
    for i in range(2):
        await client.xadd(METRICS_STREAM, {"v": 1}, id=f"{old_ms + i}-0")
    await client.xgroup_create(METRICS_STREAM, "rollup", id="0")
    await client.xadd(METRICS_STREAM, {"v": 1})
    assert await trim_metrics_stream(client, 3600) == 0
    assert await client.xlen(METRICS_STREAM) == 3
    # Once read and acknowledged, the old ones go; the fresh one stays for resuming clients.
    read: Any = await client.xreadgroup("rollup", "c", {METRICS_STREAM: ">"}, count=10)
    await client.xack(METRICS_STREAM, "rollup", *[entry_id for entry_id, _ in read[0][1]])
    assert await trim_metrics_stream(client, 3600) == 2
    assert await client.xlen(METRICS_STREAM) == 1
