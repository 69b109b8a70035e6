"""Rate limits in Redis: budgets shared by gateway replicas, per token subject and per IP,
separate for ingest, API and WebSocket connects, with 429 + Retry-After + RateLimit-*."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.auth import Principal
from gateway.http.ratelimit import check_websocket
from tests.ops_support import Client, MakeClient, bearer, ops_settings

OFF: dict[str, Any] = {
    "rate_limit_api_subject": 0,
    "rate_limit_api_ip": 0,
    "rate_limit_ingest_subject": 0,
    "rate_limit_ingest_ip": 0,
}
EVENT = {"user_id": "u1", "type": "profile_view"}


async def test_subject_budget_is_shared_by_two_gateways(make_client: MakeClient) -> None:
    limits = {**OFF, "rate_limit_api_subject": 5}
    a, b = await make_client(**limits), await make_client(**limits)
    alice = bearer("user", "alice")
    remaining = []
    for client in (a, a, a, b, b):
        response = await client.get("/openapi.json", headers=alice)
        assert response.status == 200
        assert response.headers["RateLimit-Limit"] == "5"
        remaining.append(int(response.headers["RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    for client in (a, b):
        refused = await client.get("/openapi.json", headers=alice)
        assert refused.status == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert refused.headers["RateLimit-Limit"] == "5"
        assert int(refused.headers["RateLimit-Reset"]) >= 1
        assert refused.headers["RateLimit-Policy"] == "5;w=60"
        assert (await refused.json())["error"]["code"] == "rate_limited"
    # Another subject from the same address has its own budget.
    assert (await b.get("/openapi.json", headers=bearer("user", "bob"))).status == 200


async def test_concurrent_requests_never_exceed_the_budget(make_client: MakeClient) -> None:
    limits = {**OFF, "rate_limit_api_subject": 20}
    a, b = await make_client(**limits), await make_client(**limits)
    headers = bearer("user", "carol")
    responses = await asyncio.gather(
        *(c.get("/openapi.json", headers=headers) for c in [a, b] * 25)
    )
    assert sorted(r.status for r in responses) == [200] * 20 + [429] * 30


async def test_ip_budget_applies_to_anonymous_callers(make_client: MakeClient) -> None:
    client = await make_client(**{**OFF, "rate_limit_api_ip": 3})
    statuses = [(await client.get("/status")).status for _ in range(4)]
    assert statuses == [401, 401, 401, 429]  # refused before authentication is even tried
    # An invalid token does not open a subject budget of its own.
    forged = {"Authorization": "Bearer not.a.token"}
    assert (await client.get("/status", headers=forged)).status == 429


async def test_ingest_and_api_budgets_are_separate(make_client: MakeClient) -> None:
    client = await make_client(**{**OFF, "rate_limit_ingest_subject": 2})
    producer = bearer("producer", "bot")
    statuses = [
        (await client.post("/ingest/event", json=EVENT, headers=producer)).status for _ in range(3)
    ]
    assert statuses == [202, 202, 429]
    assert (await client.get("/openapi.json", headers=producer)).status == 200
    assert "RateLimit-Limit" not in (await client.get("/openapi.json")).headers  # api is off


async def test_probes_are_never_limited(make_client: MakeClient) -> None:
    client = await make_client(**{**OFF, "rate_limit_api_ip": 1})
    for _ in range(5):
        for path in ("/health", "/metrics"):
            response = await client.get(path)
            assert response.status == 200
            assert "RateLimit-Limit" not in response.headers


async def test_budget_refills_over_the_window(make_client: MakeClient) -> None:
    client = await make_client(**{**OFF, "rate_limit_api_ip": 2, "rate_limit_window": 1.0})
    assert [(await client.get("/openapi.json")).status for _ in range(3)] == [200, 200, 429]
    await asyncio.sleep(0.6)  # one request's worth: window / limit = 0.5 s
    assert (await client.get("/openapi.json")).status == 200
    assert (await client.get("/openapi.json")).status == 429


async def test_limiter_lets_traffic_through_when_redis_is_down(make_client: MakeClient) -> None:
    client = await make_client(redis_port=1, **{**OFF, "rate_limit_api_ip": 1})
    assert [(await client.get("/openapi.json")).status for _ in range(3)] == [200, 200, 200]


async def test_websocket_connect_budget(make_client: MakeClient) -> None:
    """`check_websocket` is the hook for the WebSocket handler: its own budget per subject."""
    settings = ops_settings(**{**OFF, "rate_limit_ws_subject": 2, "rate_limit_ws_ip": 0})
    app = create_app(settings)

    async def connect(request: web.Request) -> web.Response:
        await check_websocket(request, Principal("dana", "user"))
        return web.Response(text="upgraded")

    app.router.add_get("/ws-probe", connect)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    try:
        statuses = [(await client.get("/ws-probe")).status for _ in range(3)]
    finally:
        await client.close()
    assert statuses == [200, 200, 429]
