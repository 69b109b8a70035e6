"""Seeding over HTTP: admin only, refused in production, load / status / clear round trip."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from migrations import runner
from sinks.db import connect
from tests.conftest import ScratchDb
from tests.ops_support import MakeClient, bearer, flushed_redis, gateways, ops_settings


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    async with flushed_redis(), gateways() as make:
        yield make


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/admin/seed"), ("GET", "/admin/seed/status"), ("DELETE", "/admin/seed")],
)
async def test_seed_endpoints_refuse_anonymous_and_non_admin(
    make_client: MakeClient, method: str, path: str
) -> None:
    client = await make_client()
    assert (await client.request(method, path)).status == 401
    for role in ("user", "producer"):
        response = await client.request(method, path, headers=bearer(role))
        assert response.status == 403, role


async def test_seed_status_and_clear_round_trip(
    make_client: MakeClient, scratch_db: ScratchDb
) -> None:
    s = await scratch_db()
    conn = await connect(s)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        await runner.up(conn)
        client = await make_client(s)
        response = await client.post(
            "/admin/seed", json={"users": 2, "days": 2, "seed": 4}, headers=bearer()
        )
        assert response.status == 201
        body = await response.json()
        assert len(body["users"]) == 2
        stored = await conn.fetchval("SELECT count(*) FROM real_time_events")
        assert stored == body["rows"]["real_time_events"] > 0

        status = await (await client.get("/admin/seed/status", headers=bearer())).json()
        assert [(r["seed"], r["users"], r["days"]) for r in status["runs"]] == [(4, 2, 2)]

        bad = await client.post("/admin/seed", json={"users": 0}, headers=bearer())
        assert bad.status == 422
        assert (await bad.json())["error"]["field"] == "$.users"

        cleared = await client.delete("/admin/seed", headers=bearer())
        assert cleared.status == 200
        assert (await cleared.json())["removed"]["real_time_events"] == stored
        assert await conn.fetchval("SELECT count(*) FROM real_time_events") == 0
    finally:
        await conn.close()


async def test_seeding_is_refused_in_production(make_client: MakeClient) -> None:
    prod = ops_settings(app_env="production", jwt_secret="p" * 40)
    client = await make_client(prod)
    for method in ("POST", "DELETE"):
        response = await client.request(method, "/admin/seed", headers=bearer(settings=prod))
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden_in_production"
