"""`/health`, `/ready` and `/status` over real HTTP. Dependencies are broken by cutting a TCP
proxy between the gateway and the shared Redis or PostgreSQL, never by stopping the servers
(other suites run against them at the same time)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from schemas.settings import Settings
from schemas.streams import DLQ_STREAM, backlog_key, events_stream
from tests.conftest import ScratchDb
from tests.ops_support import MakeClient, bearer, ops_settings
from tests.tcp_proxy import TcpProxy


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    s = ops_settings()
    proxy = TcpProxy(s.redis_host, s.redis_port)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def pg_proxy(migrated: Settings) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(migrated.timescale_host, migrated.timescale_port)
    await proxy.start()
    yield proxy
    await proxy.close()


async def ready(client: Any) -> tuple[int, dict[str, Any]]:
    response = await client.get("/ready")
    return response.status, await response.json()


async def until_ready(client: Any, limit_s: float = 10.0) -> dict[str, Any]:
    """Poll /ready until 200: pools reconnect on their next use after a restore."""
    deadline = time.monotonic() + limit_s
    while True:
        status, body = await ready(client)
        if status == 200 or time.monotonic() > deadline:
            assert status == 200, body
            return body
        await asyncio.sleep(0.1)


async def test_health_answers_while_everything_is_down(make_client: MakeClient) -> None:
    client = await make_client(redis_port=1, timescale_port=1)
    response = await client.get("/health")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"


async def test_ready_when_redis_and_database_answer(
    make_client: MakeClient, migrated: Settings
) -> None:
    client = await make_client(migrated)
    status, body = await ready(client)
    assert status == 200, body
    assert body["status"] == "ready"
    assert body["checks"]["redis"]["ok"] is True
    assert body["checks"]["database"] == {
        "ok": True,
        "migrations": "current",
        "ms": body["checks"]["database"]["ms"],
    }


async def test_ready_turns_503_while_redis_is_cut_and_back(
    make_client: MakeClient, migrated: Settings, redis_proxy: TcpProxy
) -> None:
    client = await make_client(migrated, redis_port=redis_proxy.port)
    await until_ready(client)
    await redis_proxy.cut()
    started = time.monotonic()
    status, body = await ready(client)
    assert time.monotonic() - started < 3  # each check is bounded by a short timeout
    assert status == 503
    assert body["error"]["code"] == "not_ready"
    assert body["error"]["message"].startswith("redis: ")
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["reason"]
    assert body["checks"]["database"]["ok"] is True  # only the failing check is blamed
    await redis_proxy.restore()
    await until_ready(client)


async def test_ready_turns_503_while_postgres_is_cut_and_back(
    make_client: MakeClient, migrated: Settings, pg_proxy: TcpProxy
) -> None:
    client = await make_client(migrated, timescale_port=pg_proxy.port)
    await until_ready(client)
    await pg_proxy.cut()
    status, body = await ready(client)
    assert status == 503
    assert body["checks"]["database"]["ok"] is False
    assert "unreachable" in body["checks"]["database"]["reason"]
    assert body["checks"]["redis"]["ok"] is True
    await pg_proxy.restore()
    await until_ready(client)


async def test_ready_503_on_a_closed_port_at_start(make_client: MakeClient) -> None:
    client = await make_client(redis_port=1, timescale_port=1)
    status, body = await ready(client)
    assert status == 503
    assert not body["checks"]["redis"]["ok"]
    assert not body["checks"]["database"]["ok"]


async def test_ready_503_while_migrations_are_pending(
    make_client: MakeClient, scratch_db: ScratchDb
) -> None:
    client = await make_client(await scratch_db())
    status, body = await ready(client)
    assert status == 503
    reason = body["checks"]["database"]["reason"]
    assert "pending migrations" in reason
    assert "0001" in reason


async def test_status_requires_a_token(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.get("/status")
    assert response.status == 401


async def test_status_reports_streams_groups_dlq_database_and_process(
    make_client: MakeClient, migrated: Settings, ops_redis: Redis
) -> None:
    stream = events_stream(0)
    await ops_redis.xadd(stream, {"e1": b"x"})
    await ops_redis.xadd(stream, {"e2": b"y"})
    await ops_redis.xgroup_create(stream, "processor", id="0")
    await ops_redis.xreadgroup("processor", "worker-a", {stream: ">"}, count=1)  # one pending
    await ops_redis.xadd(DLQ_STREAM, {"reason": "bad"})
    await ops_redis.hset(backlog_key(0), mapping={"appended": 7, "acked": 2})
    client = await make_client(migrated)
    response = await client.get("/status", headers=bearer("producer", "bot"))
    assert response.status == 200
    body = await response.json()

    streams = {s["stream"]: s for s in body["redis"]["streams"]}
    assert streams[stream]["length"] == 2
    [group] = streams[stream]["groups"]
    assert group["group"] == "processor"
    assert group["pending"] == 1
    assert group["lag"] == 1
    assert group["consumers"] == 1
    assert group["consumers_alive"] == 1
    assert 0 <= group["oldest_pending_age_seconds"] < 60
    assert streams[events_stream(1)] == {"stream": events_stream(1), "length": 0, "groups": []}
    assert body["redis"]["dlq"] == {"length": 1}
    assert body["redis"]["backlog_events"] == 5

    db = body["database"]
    assert db["timescaledb_edition"] in ("apache", "timescale")
    assert db["timescaledb_version"].count(".") == 2
    assert set(db["chunks"]) >= {"real_time_events", "profile_metrics", "engagement_metrics"}
    assert all(isinstance(n, int) and n >= 0 for n in db["chunks"].values())

    assert set(db["rollups"]) == {
        "profile_metrics_5min",
        "profile_metrics_hourly",
        "profile_metrics_daily",
        "engagement_hourly",
    }
    for rollup in db["rollups"].values():
        assert (rollup["newest_bucket"] is None) == (rollup["age_seconds"] is None)
    assert "connections" in body["websocket"]

    process = body["process"]
    assert process["rss_bytes"] > 10 * 2**20
    assert process["cpu_seconds"] > 0


async def test_status_keeps_redis_figures_when_the_database_is_down(
    make_client: MakeClient, ops_redis: Redis
) -> None:
    await ops_redis.xadd(DLQ_STREAM, {"reason": "bad"})
    client = await make_client(timescale_port=1)
    response = await client.get("/status", headers=bearer())
    assert response.status == 200
    body = await response.json()
    assert body["redis"]["dlq"]["length"] == 1
    assert "unavailable" in body["database"]["error"]
