"""The API's Redis cache: hits after a first call, per-user invalidation by the processor's
commit, by the rollup group's recompute of a late event's bucket, by a maintenance run's new
aggregations and by goal writes, no stale answer across a commit, and the API without Redis or
without TimescaleDB."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from gateway.api.cache import CACHE_TIMEOUT_S, ApiCache
from pipeline.runner import Delivery
from pipeline.stages.rollup import RollupStage
from pipeline.stages.rows import to_datetime
from schemas.settings import Settings
from schemas.streams import METRICS_STREAM
from sinks.aggregations import refresh_aggregations
from sinks.cache_generations import entry_key, generation_key, invalidate
from sinks.rollups import watermark
from tests.api_support import (
    HOUR_US,
    ApiEnv,
    api_env,
    cache_count,
    fixed_clock,
    iso,
    new_user,
    parse,
    random_events,
    to_us,
)
from tests.streams_helpers import make_event

PROFILE = "/api/v1/metrics/profile"
# The gateway's clock, pinned: caching does not depend on the instant, and with the wall
# clock a default range's key would move to the next bucket at a boundary, turning a hit into
# a miss in the middle of a test. Off every bucket boundary, as most instants are.
NOW = datetime(2026, 12, 2, 12, 34, 56, 789000, tzinfo=UTC)
NOW_US = to_us(NOW)
_SINCE = iso(NOW - timedelta(days=1))
_UNTIL = iso(NOW + timedelta(hours=1))
CACHED = [
    (PROFILE, {"bucket": "5m", "from": _SINCE, "to": _UNTIL}),
    ("/api/v1/metrics/engagement", {"bucket": "1d", "from": _SINCE, "to": _UNTIL}),
    ("/api/v1/metrics/summary", {}),
    ("/api/v1/metrics/aggregations", {"name": "engagement_rate_7d"}),
    ("/api/v1/events", {"limit": "5"}),
]


@pytest.fixture
async def env(migrated: Settings) -> AsyncIterator[ApiEnv]:
    async with api_env(migrated, clock=fixed_clock(NOW)) as e:
        yield e


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("path", "params"), CACHED)
async def test_hit_after_a_first_call_until_new_data_for_that_user(
    env: ApiEnv, path: str, params: dict[str, str]
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    rng = random.Random(11)
    await env.store(
        random_events(alice, rng, 80, NOW_US - 3 * HOUR_US, 3 * HOUR_US)
        + random_events(bob, rng, 80, NOW_US - 3 * HOUR_US, 3 * HOUR_US)
    )
    hits, misses = cache_count("hit"), cache_count("miss")
    s1, first, h1 = await env.get(path, alice, **params)
    s2, second, h2 = await env.get(path, alice, **params)
    assert (s1, s2) == (200, 200), first
    assert (h1["X-Cache"], h2["X-Cache"]) == ("miss", "hit")
    assert second == first
    assert (cache_count("hit") - hits, cache_count("miss") - misses) == (1, 1)
    _, _, hb = await env.get(path, bob, **params)
    assert hb["X-Cache"] == "miss"  # one user's entry never answers for another
    _, _, hb = await env.get(path, bob, **params)
    assert hb["X-Cache"] == "hit"

    # New data for Alice, through the processor as the worker stores it.
    t = NOW_US - 10**6
    await env.store(
        [make_event(alice, kind, value=3, time_us=t) for kind in ("post_like", "profile_view")]
    )
    _, third, h3 = await env.get(path, alice, **params)
    assert h3["X-Cache"] == "miss"
    if path != "/api/v1/metrics/aggregations":  # the maintenance task computes those
        assert third != first
    _, _, hb = await env.get(path, bob, **params)
    assert hb["X-Cache"] == "hit"  # Bob's answers were not invalidated


async def _delivery_touching(env: ApiEnv, user: str) -> Delivery:
    """The processor's newest `ia:metrics` entry for `user`, as the rollup group receives it."""
    entries: Any = await env.redis.xrevrange(METRICS_STREAM, count=50)
    for entry_id, fields in entries:
        if user in orjson.loads(fields.get(b"touched", b"{}")):
            return Delivery(METRICS_STREAM, entry_id.decode(), list(fields.items()))
    raise AssertionError(f"no ia:metrics entry touches {user}")


async def test_a_late_events_rollup_recompute_makes_the_cached_series_a_miss(env: ApiEnv) -> None:
    """A late event's bucket is read from the rollup. The processor invalidates when it stores
    the event, but an answer computed before the rollup group recomputes that bucket is still
    stale: the recompute must invalidate again."""
    user = new_user()
    hour_us = NOW_US // HOUR_US * HOUR_US
    late_us = hour_us - 5 * HOUR_US + 600_000_000  # far older than ROLLUP_MARGIN
    params = {"bucket": "1h", "from": _SINCE, "to": _UNTIL}
    await env.store([make_event(user, "profile_view", value=2, time_us=late_us)])
    _, first, h1 = await env.get(PROFILE, user, **params)
    _, _, h2 = await env.get(PROFILE, user, **params)
    assert (h1["X-Cache"], h2["X-Cache"]) == ("miss", "hit")
    assert first["totals"]["profileViews"] == 2

    # The late event, stored by the processor; the rollup group has not run yet.
    await env.store([make_event(user, "profile_view", value=3, time_us=late_us + 1)], rollup=False)
    _, stale, h3 = await env.get(PROFILE, user, **params)
    _, _, h4 = await env.get(PROFILE, user, **params)
    assert (h3["X-Cache"], h4["X-Cache"]) == ("miss", "hit")
    async with env.pool.acquire() as conn:
        mark = await watermark(conn, "profile_metrics_hourly")
    if mark is None or mark > to_datetime(late_us):
        # The bucket still comes from the old rollup: the Apache edition's table, or the full
        # edition's materialisation below the watermark.
        assert stale["totals"]["profileViews"] == 2
    else:
        # Full edition, a bucket that has not ended by the server's clock (the pinned NOW may
        # be ahead of it): computed from raw rows at query time, so never stale.
        assert stale["totals"]["profileViews"] == 5

    dead = await RollupStage(env.pool, env.redis)([await _delivery_touching(env, user)])
    assert dead == []
    _, fresh, h5 = await env.get(PROFILE, user, **params)
    assert h5["X-Cache"] == "miss"
    async with env.pool.acquire() as conn:
        raw = await conn.fetchval(
            "SELECT sum(profile_views) FROM profile_metrics WHERE user_id = $1", user
        )
    assert fresh["totals"]["profileViews"] == raw == 5


async def test_a_maintenance_run_makes_cached_aggregations_a_miss(env: ApiEnv) -> None:
    user = new_user()
    t = NOW_US - HOUR_US
    await env.store(
        [
            make_event(user, "post_impression", value=200, time_us=t),
            make_event(user, "post_like", value=9, time_us=t + 1),
            make_event(user, "post_comment", value=4, time_us=t + 2),
            make_event(user, "post_share", value=1, time_us=t + 3),
        ]
    )
    path = "/api/v1/metrics/aggregations"
    params = {"name": "engagement_rate_7d", "from": _SINCE, "to": _UNTIL}
    _, before, h1 = await env.get(path, user, **params)
    _, _, h2 = await env.get(path, user, **params)
    assert (h1["X-Cache"], h2["X-Cache"]) == ("miss", "hit")
    assert before["aggregations"] == []

    async with env.pool.acquire() as conn:
        run = await refresh_aggregations(conn, env.redis, NOW)
        expected = await conn.fetchval(
            "SELECT (sum(likes) + sum(comments) + sum(shares))::float8 / sum(impressions) "
            "FROM engagement_metrics WHERE user_id = $1",
            user,
        )
    assert user in run.changed_users
    _, after, h3 = await env.get(path, user, **params)
    assert h3["X-Cache"] == "miss"
    [point] = after["aggregations"]
    assert point["value"] == pytest.approx(expected) == pytest.approx(14 / 200)
    assert parse(point["time"]) == NOW.replace(minute=0, second=0, microsecond=0)


async def test_entries_are_per_parameters_and_live_for_the_ttl(env: ApiEnv) -> None:
    user = new_user()
    await env.store([make_event(user, "profile_view", value=2, time_us=NOW_US - 10**6)])
    _, _, h = await env.get(PROFILE, user, bucket="1h")
    assert h["X-Cache"] == "miss"
    _, daily, h = await env.get(PROFILE, user, bucket="1d")
    assert h["X-Cache"] == "miss"
    _, _, h = await env.get(PROFILE, user, bucket="1h")
    assert h["X-Cache"] == "hit"
    keys = [k async for k in env.redis.scan_iter(match=entry_key(user, "*"))]
    assert len(keys) == 2
    for key in keys:
        assert 290_000 < await env.redis.pttl(key) <= 300_000
    assert daily["totals"]["profileViews"] == 2


async def test_an_answer_computed_across_a_commit_is_never_served(env: ApiEnv) -> None:
    """Lookup (miss), then a commit invalidates, then the answer computed from the data before
    the commit is stored: the next lookup must miss, not serve it."""
    cache = ApiCache(env.redis, ttl_s=300)
    user = new_user()
    first = await cache.lookup(user, "k")
    assert first.body is None and first.generation is not None
    await invalidate(env.redis, [user])
    await cache.store(user, "k", first.generation, b'{"stale": true}')
    again = await cache.lookup(user, "k")
    assert again.body is None and again.result == "miss"
    await cache.store(user, "k", again.generation or b"", b'{"fresh": true}')
    assert (await cache.lookup(user, "k")).body == b'{"fresh": true}'
    # A generation that expired is replaced by a new token, never by an old one.
    await env.redis.delete(generation_key(user))
    assert (await cache.lookup(user, "k")).body is None


async def test_goal_writes_invalidate_the_summary(env: ApiEnv) -> None:
    user = new_user()
    summary = "/api/v1/metrics/summary"
    _, before, _ = await env.get(summary, user)
    _, _, h = await env.get(summary, user)
    assert h["X-Cache"] == "hit" and before["goals"] == []
    goal = {"metric": "followers", "targetValue": 10, "deadline": "2099-01-01T00:00:00Z"}
    status, created, _ = await env.call("POST", "/api/v1/goals", user, json=goal)
    assert status == 201
    _, after, h = await env.get(summary, user)
    assert h["X-Cache"] == "miss"
    assert [g["id"] for g in after["goals"]] == [created["id"]]


async def test_cache_off(migrated: Settings) -> None:
    async with api_env(migrated, clock=fixed_clock(NOW), api_cache_ttl=0.0) as env:
        user = new_user()
        for _ in range(2):
            status, _, headers = await env.get(PROFILE, user)
            assert status == 200 and "X-Cache" not in headers
        assert [k async for k in env.redis.scan_iter(match="ia:cache:*")] == []


async def test_the_api_answers_without_redis(migrated: Settings) -> None:
    async with api_env(migrated, clock=fixed_clock(NOW), redis_port=closed_port()) as env:
        user = new_user()
        await env.store([make_event(user, "profile_view", value=4, time_us=NOW_US - 10**6)])
        errors = cache_count("error")
        status, body, headers = await env.get(PROFILE, user)
        assert status == 200 and headers["X-Cache"] == "error"
        assert body["totals"]["profileViews"] == 4
        assert cache_count("error") == errors + 1


async def test_a_stalled_redis_does_not_stall_the_api(migrated: Settings) -> None:
    """A Redis that accepts connections and never answers: answers come uncached, on time."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with api_env(migrated, clock=fixed_clock(NOW), redis_port=port) as env:
            started = time.monotonic()
            status, _, headers = await env.get(PROFILE, new_user())
            assert status == 200 and headers["X-Cache"] == "error"
            assert time.monotonic() - started < 3 * CACHE_TIMEOUT_S + 1
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_database_down_is_a_503(migrated: Settings) -> None:
    async with api_env(migrated, clock=fixed_clock(NOW), timescale_port=closed_port()) as env:
        status, body, headers = await env.get(PROFILE, new_user())
        assert status == 503
        assert body["error"]["code"] == "database_unavailable"
        assert headers["Retry-After"] == "5"
