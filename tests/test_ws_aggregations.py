"""The derived series over a real WebSocket: a dashboard subscribes to them by name, gets their
current values from metric_aggregations on subscribe, and a `metrics_update` carrying only
the values a maintenance run changed, each equal to SQL over the raw rows."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import asyncpg
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from pipeline.processor import Processor
from pipeline.runner import Delivery
from pipeline.stages.rows import to_datetime
from schemas.aggregations import AGGREGATION_METRICS
from schemas.events import StreamEvent, stream_event_encoder
from schemas.metrics import CATALOGUE
from schemas.settings import Settings
from schemas.streams import events_stream
from sinks.aggregations import AggregationRun, refresh_aggregations
from sinks.db import create_pool
from sinks.rollups import level
from tests.streams_helpers import make_event
from tests.ws_support import new_user, token, ws_connect

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
DERIVED = sorted(AGGREGATION_METRICS)

# What each derived series is, written again over the raw rows (all of the test's events fall
# inside every window, so the windows reduce to "all rows", or to the two weeks for `wow`).
_EXPECTED = """
WITH e AS (
    SELECT (sum(likes) + sum(comments) + sum(shares))::float8 / NULLIF(sum(impressions), 0) AS rate,
           sum(posts_published)::float8 / 30 * 7 AS cadence
    FROM engagement_metrics WHERE user_id = $1
), p AS (
    SELECT (sum(connections_added) - sum(connections_removed))::float8
           / (SELECT connections FROM profile_metrics WHERE user_id = $1
              AND connections IS NOT NULL ORDER BY time LIMIT 1) AS growth,
           (sum(profile_views) FILTER (WHERE time > $2::timestamptz - interval '7 days')
            - sum(profile_views) FILTER (WHERE time <= $2::timestamptz - interval '7 days'))::float8
           / sum(profile_views) FILTER (WHERE time <= $2::timestamptz - interval '7 days') AS wow
    FROM profile_metrics WHERE user_id = $1
)
SELECT e.rate, e.cadence, p.growth, p.wow FROM e, p
"""


@pytest.fixture
async def pool(migrated: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(dataclasses.replace(migrated, db_pool_min=1, db_pool_max=2))
    yield p
    await p.close()


async def _store(redis: Redis, pool: asyncpg.Pool, events: Sequence[StreamEvent]) -> None:
    """Through the processor, then the rollup recompute of what the events touched (as the
    worker's two groups do)."""
    fields = [(e.event_id.encode(), stream_event_encoder.encode(e)) for e in events]
    assert await Processor(redis, pool)([Delivery(events_stream(0), "1-0", fields)]) == []
    spans: dict[str, tuple[datetime, datetime]] = {}
    for e in events:
        t = to_datetime(e.time_us)
        lo, hi = spans.get(e.user_id, (t, t))
        spans[e.user_id] = (min(lo, t), max(hi, t))
    async with pool.acquire() as conn:
        await level(conn, spans)


async def _expected(pool: asyncpg.Pool, user: str, at: datetime) -> dict[str, float | None]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(_EXPECTED, user, at)
    assert row is not None
    return {
        "engagementRate7d": row["rate"],
        "engagementRate30d": row["rate"],
        "postingCadence30d": row["cadence"],
        "connectionGrowthRate30d": row["growth"],
        "profileViewsWeekOverWeek": row["wow"],
    }


def _events(user: str) -> list[StreamEvent]:
    now = int(time.time() * 1e6)
    t = now - 2 * HOUR_US
    return [
        make_event(user, "profile_snapshot", time_us=t, properties={"connections": 200}),
        make_event(user, "connection_added", value=3, time_us=t + 1),
        make_event(user, "connection_added", value=2, time_us=t + 2),
        make_event(user, "connection_removed", value=1, time_us=t + 3),
        make_event(user, "profile_view", value=4, time_us=now - 9 * DAY_US),
        make_event(user, "profile_view", value=7, time_us=t + 4),
        make_event(user, "post_published", time_us=t + 5),
        make_event(user, "post_published", time_us=t + 6),
        make_event(user, "post_impression", value=400, time_us=t + 7),
        make_event(user, "post_like", value=12, time_us=t + 8),
        make_event(user, "post_comment", value=5, time_us=t + 9),
        make_event(user, "post_share", value=3, time_us=t + 10),
    ]


async def _refresh(pool: asyncpg.Pool, redis: Redis) -> AggregationRun:
    """A maintenance run's aggregation step, announcing on the gateway's Redis."""
    async with pool.acquire() as conn:
        return await refresh_aggregations(conn, redis)


def _approx(values: dict[str, float | None]) -> dict[str, object]:
    return {k: None if v is None else pytest.approx(v) for k, v in values.items()}


async def test_derived_series_are_subscribed_snapshotted_and_announced_when_they_change(
    http: ClientSession, gw: TestServer, redis: Redis, pool: asyncpg.Pool
) -> None:
    user = new_user()
    await _store(redis, pool, _events(user))
    url = gw.make_url("/ws")
    async with ws_connect(http, url, token(user)) as client:
        ack, snapshot = await client.subscribe([*DERIVED, "likes"])
        assert ack["data"]["metrics"] == sorted([*DERIVED, "likes"])
        # No maintenance run yet: no point, so no current value.
        assert snapshot["data"]["metrics"] == {**dict.fromkeys(DERIVED), "likes": 12.0}

        run = await _refresh(pool, redis)
        expected = await _expected(pool, user, run.at)
        assert all(v is not None for v in expected.values()), expected
        update = await client.recv_type("metrics_update")
        assert update["data"]["metrics"] == _approx(expected)
        assert update["data"]["metrics"]["engagementRate7d"] == pytest.approx(20 / 400)
        assert update["data"]["metrics"]["connectionGrowthRate30d"] == pytest.approx(4 / 200)
        assert update["data"]["metrics"]["profileViewsWeekOverWeek"] == pytest.approx(3 / 4)
        assert update["data"].get("snapshot") is None

        # A later dashboard reads the same values from metric_aggregations on subscribe.
        async with ws_connect(http, url, token(user)) as late:
            _, snap = await late.subscribe(DERIVED)
            assert snap["data"]["metrics"] == _approx(expected)

        # Nothing changed: a second run announces nothing.
        await _refresh(pool, redis)
        assert await client.until_pong() == []

        # More likes: the live `likes` update, then only the two engagement rates change.
        await _store(redis, pool, [make_event(user, "post_like", value=20)])
        live = await client.recv_type("metrics_update")
        assert live["data"]["metrics"] == {"likes": 32.0}
        run = await _refresh(pool, redis)
        expected = await _expected(pool, user, run.at)
        update = await client.recv_type("metrics_update")
        assert update["data"]["metrics"] == _approx(
            {k: expected[k] for k in ("engagementRate7d", "engagementRate30d")}
        )
        assert update["data"]["metrics"]["engagementRate30d"] == pytest.approx(40 / 400)


async def test_the_whole_catalogue_includes_the_derived_series(
    http: ClientSession, gw: TestServer
) -> None:
    async with ws_connect(http, gw.make_url("/ws"), token(new_user())) as client:
        ack, snapshot = await client.subscribe()
        assert set(ack["data"]["metrics"]) == set(CATALOGUE) | set(DERIVED)
        assert set(snapshot["data"]["metrics"]) == set(ack["data"]["metrics"])
        await client.send("subscribe", {"metrics": ["engagementRate7d", "engagementRate1y"]})
        error = await client.recv_type("error")
        assert error["data"]["code"] == "unknown_metric"
        assert error["data"]["metrics"] == ["engagementRate1y"]
