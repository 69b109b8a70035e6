"""Shared helpers of the analytics API tests: a real gateway on loopback, events stored by the
real processor (the code path the worker runs), rollups recomputed as the rollup group does,
and the SQL over raw rows that each answer is checked against.

These tests use Redis db 8: other suites flush db 15 (and their own dbs) while they run. Users
are fresh per test, so tests never see each other's rows in the shared database.
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.auth import Role, mint_token
from gateway.keys import Clock
from pipeline.processor import Processor
from pipeline.runner import Delivery
from pipeline.stages.rows import to_datetime
from schemas.events import EVENT_TYPES, StreamEvent, stream_event_encoder
from schemas.settings import Settings
from schemas.streams import events_stream
from sinks.db import Conn, create_pool
from sinks.rollups import level
from tests.streams_helpers import make_event

API_REDIS_DB = 8
DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
# Every event type, in a fixed order so a seeded generator draws the same sequence.
TYPES = sorted(EVENT_TYPES)

Client = TestClient[web.Request, web.Application]


def api_settings(base: Settings, **overrides: Any) -> Settings:
    """Redis db 8, no rate limits (tests send many requests), no WebSocket fan-out."""
    fields: dict[str, Any] = {
        "redis_db": API_REDIS_DB,
        "rate_limit_api_subject": 0,
        "rate_limit_api_ip": 0,
        "ws_enabled": False,
        **overrides,
    }
    return dataclasses.replace(base, **fields)


def new_user(prefix: str = "api") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def now_us() -> int:
    return int(time.time() * 1_000_000)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def cache_count(result: str) -> float:
    return REGISTRY.get_sample_value("ia_api_cache_requests_total", {"result": result}) or 0.0


def random_events(
    user: str, rng: random.Random, n: int, start_us: int, span_us: int
) -> list[StreamEvent]:
    """`n` events of every type at random times in [start, start + span)."""
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
                "profile_views": rng.randrange(100, 5000),
            }
            value = 1
        elif kind == "profile_update":
            props = {"profile_completeness": rng.randrange(0, 101)}
        elif kind.startswith("post_"):
            props = {"post_id": f"post-{rng.randrange(5)}"}
        t = start_us + rng.randrange(span_us)
        out.append(make_event(user, kind, value=value, time_us=t, properties=props))
    return out


@dataclass
class ApiEnv:
    settings: Settings
    client: Client
    redis: Redis
    pool: asyncpg.Pool

    async def call(
        self,
        method: str,
        path: str,
        user: str,
        role: Role = "user",
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, decoded JSON body or None, headers) of one request as `user`."""
        token = mint_token(self.settings, subject=user, role=role, ttl_seconds=600)
        all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
        async with self.client.request(
            method, path, params=params, json=json, data=data, headers=all_headers
        ) as response:
            body = await response.read()
            decoded = await response.json() if body else None
            return response.status, decoded, dict(response.headers)

    async def get(
        self, path: str, user: str, role: Role = "user", /, **params: str
    ) -> tuple[int, Any, dict[str, str]]:
        return await self.call("GET", path, user, role, params=params)

    async def store(self, events: Sequence[StreamEvent], *, rollup: bool = True) -> None:
        """Store `events` through the processor (validate, enrich, COPY, cache invalidation,
        `ia:metrics`), then, unless `rollup` is False, recompute the rollups they touched."""
        fields = [(e.event_id.encode(), stream_event_encoder.encode(e)) for e in events]
        delivery = Delivery(events_stream(0), "1-0", fields)
        dead = await Processor(self.redis, self.pool)([delivery])
        assert not dead, [d.reason for d in dead]
        if rollup:
            spans: dict[str, tuple[datetime, datetime]] = {}
            for e in events:
                t = to_datetime(e.time_us)
                lo, hi = spans.get(e.user_id, (t, t))
                spans[e.user_id] = (min(lo, t), max(hi, t))
            async with self.pool.acquire() as conn:
                await level(conn, spans)


def to_us(t: datetime) -> int:
    """`t` in microseconds since the epoch, as events carry their time."""
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def fixed_clock(now: datetime) -> Clock:
    """The gateway clock of a test pinned at `now`."""
    return lambda: now


async def rollup_storage(conn: Conn, rollup: str) -> str:
    """Where a rollup's rows are stored: the rollup table (Apache edition), or the hypertable
    that holds a continuous aggregate's materialisation (full edition; the view itself also
    shows raw rows past its watermark and cannot be updated)."""
    name: str = await conn.fetchval(
        "SELECT coalesce((SELECT format('%I.%I', materialization_hypertable_schema, "
        "materialization_hypertable_name) FROM timescaledb_information.continuous_aggregates "
        "WHERE view_name = $1), quote_ident($1))",
        rollup,
    )
    return name


@asynccontextmanager
async def api_env(
    base: Settings, *, clock: Clock | None = None, **overrides: Any
) -> AsyncIterator[ApiEnv]:
    """A gateway on loopback; `clock` pins its "now" (default: the wall clock)."""
    settings = api_settings(base, **overrides)
    # From `base`: a test may point the gateway at a dead Redis, the test's own client works.
    redis = Redis(host=base.redis_host, port=base.redis_port, db=API_REDIS_DB)
    await redis.flushdb()
    pool = await create_pool(dataclasses.replace(settings, timescale_port=base.timescale_port))
    app = create_app(settings) if clock is None else create_app(settings, clock=clock)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield ApiEnv(settings, client, redis, pool)
    finally:
        await client.close()
        await pool.close()
        await redis.aclose()


# --- what the answers are checked against: plain SQL over the raw rows ---------------------

RAW_PROFILE = """
SELECT time_bucket($2::interval, time) AS bucket,
       sum(profile_views) AS "profileViews", sum(search_appearances) AS "searchAppearances",
       sum(connections_added) AS "connectionsAdded",
       sum(connections_removed) AS "connectionsRemoved",
       sum(messages_received) AS "messagesReceived",
       (array_agg(total_profile_views ORDER BY time DESC)
          FILTER (WHERE total_profile_views IS NOT NULL))[1] AS "totalProfileViews",
       (array_agg(connections ORDER BY time DESC)
          FILTER (WHERE connections IS NOT NULL))[1] AS "connections",
       (array_agg(followers ORDER BY time DESC)
          FILTER (WHERE followers IS NOT NULL))[1] AS "followers",
       (array_agg(profile_completeness ORDER BY time DESC)
          FILTER (WHERE profile_completeness IS NOT NULL))[1] AS "profileCompleteness",
       (array_agg(influence_score ORDER BY time DESC)
          FILTER (WHERE influence_score IS NOT NULL))[1] AS "influenceScore",
       count(*) AS events
FROM profile_metrics WHERE user_id = $1 AND time >= $3 AND time < $4
GROUP BY 1 ORDER BY 1
"""

RAW_ENGAGEMENT = """
SELECT time_bucket($2::interval, time) AS bucket,
       sum(posts_published) AS "postsPublished", sum(impressions) AS impressions,
       sum(likes) AS likes, sum(comments) AS comments, sum(shares) AS shares,
       (sum(likes) + sum(comments) + sum(shares))::float8
         / NULLIF(sum(impressions), 0) AS "engagementRate",
       count(*) AS events
FROM engagement_metrics WHERE user_id = $1 AND time >= $3 AND time < $4
GROUP BY 1 ORDER BY 1
"""


def assert_series_equal(actual: list[dict[str, Any]], expected: list[asyncpg.Record]) -> None:
    assert len(actual) == len(expected), ([p["time"] for p in actual], [e[0] for e in expected])
    for point, row in zip(actual, expected, strict=True):
        assert parse(point["time"]) == row["bucket"]
        for column, value in dict(row).items():
            if column == "bucket":
                continue
            if isinstance(value, float):
                assert point[column] == _approx(value), (point["time"], column)
            else:
                assert point[column] == value, (point["time"], column)


def _approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-6)


def expected_bounds(since: datetime, to: datetime, width: timedelta) -> tuple[datetime, datetime]:
    """The aligned range the API must cover for [since, to)."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    start = epoch + ((since - epoch) // width) * width
    end = epoch + ((to - epoch) // width) * width
    return start, end if end == to else end + width
