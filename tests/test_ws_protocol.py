"""The WebSocket endpoint's door and its defences, over real sockets on loopback: every way to
present a token, every bad token, malformed and oversized frames, floods and silent peers. After
each abuse, another client of the same gateway is still served."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession, WSServerHandshakeError
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from schemas.settings import Settings
from tests.ws_support import (
    gateway,
    new_user,
    token,
    ws_connect,
    ws_settings,
    xadd_metrics,
)


@pytest.fixture
async def gw(migrated: Settings, redis: Redis) -> AsyncIterator[TestServer]:
    async with gateway(ws_settings(migrated, ws_max_frame_bytes=1024)) as server:
        yield server


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _alg_none(subject: str) -> str:
    """`alg: none`: a token that asks not to be verified, claiming the admin role."""
    claims = {"sub": subject, "role": "admin", "exp": int(time.time()) + 600}
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


async def _still_served(http: ClientSession, gw: TestServer, redis: Redis) -> None:
    """A fresh client of the same gateway subscribes and receives a live update."""
    user = new_user()
    async with ws_connect(http, gw.make_url("/ws"), token(user)) as other:
        await other.subscribe(["profileViews"])
        entry = await xadd_metrics(redis, user, {"profileViews": 42})
        update = await other.recv_type("metrics_update")
        assert (update["id"], update["data"]["metrics"]) == (entry, {"profileViews": 42})


# --- authentication ----------------------------------------------------------------------


@pytest.mark.parametrize("via", ["header", "protocol", "query"])
async def test_each_way_of_presenting_a_token_is_accepted(
    http: ClientSession, gw: TestServer, via: str
) -> None:
    user = new_user()
    async with ws_connect(http, gw.make_url("/ws"), token(user), via=via) as client:
        # Browsers fail the handshake unless the offered subprotocol is echoed.
        assert client.ws.protocol == ("bearer" if via == "protocol" else None)
        ack, snapshot = await client.subscribe(["profileViews"])
        assert ack["data"] == {
            "channel": "metrics",
            "userId": user,
            "metrics": ["profileViews"],
            "updateFrequency": 0.0,
        }
        assert snapshot["data"]["userId"] == user


_BAD_TOKENS = [
    ("none", "missing bearer token"),
    ("wrong_key", "invalid token"),
    ("expired", "token expired"),
    ("alg_none", "invalid token"),
]


@pytest.mark.parametrize(
    ("kind", "via", "reason"),
    [(kind, via, reason) for kind, reason in _BAD_TOKENS for via in ("header", "query")]
    + [("not_bearer", "header", "expected Authorization: Bearer")],
)
async def test_bad_tokens_are_refused_with_401_before_the_upgrade(
    http: ClientSession, gw: TestServer, kind: str, via: str, reason: str
) -> None:
    user = new_user()
    jwt = {
        "none": None,
        "wrong_key": token(user, key="a-different-key-of-at-least-32-bytes-long"),
        "expired": token(user, ttl=-60),
        "alg_none": _alg_none(user),
        "not_bearer": "x",
    }[kind]
    with pytest.raises(WSServerHandshakeError) as refused:
        async with ws_connect(http, gw.make_url("/ws"), jwt, via=via):
            pass
    assert refused.value.status == 401
    # The same refusal read as HTTP, as a client without a WebSocket library sees it.
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    params: dict[str, str] = {}
    if kind == "not_bearer":
        headers["Authorization"] = "Token x"
    elif jwt is not None and via == "header":
        headers["Authorization"] = f"Bearer {jwt}"
    elif jwt is not None:
        params["token"] = jwt
    async with http.get(gw.make_url("/ws"), headers=headers, params=params) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        body = await response.json()
        assert body["error"]["code"] == "unauthorized"
        assert reason in body["error"]["message"]


async def test_a_plain_http_request_is_told_to_upgrade(http: ClientSession, gw: TestServer) -> None:
    async with http.get(gw.make_url("/ws")) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "websocket_required"


async def test_a_token_expiring_during_the_session_closes_it_with_4401(
    http: ClientSession, migrated: Settings, redis: Redis
) -> None:
    async with gateway(ws_settings(migrated, ws_heartbeat_interval=1000)) as server:
        # exp 7 s ago: accepted for 2 to 3 more seconds thanks to the 10 s clock-skew leeway.
        async with ws_connect(http, server.make_url("/ws"), token(new_user(), ttl=-7)) as c:
            await c.subscribe(["profileViews"])
            assert await c.close_code(wait=6) == (4401, "token expired")


# --- what a client may do ----------------------------------------------------------------


async def test_only_admins_may_watch_another_user_and_nothing_leaks(
    http: ClientSession, gw: TestServer, redis: Redis
) -> None:
    alice, bob = new_user(), new_user()
    url = gw.make_url("/ws")
    async with (
        ws_connect(http, url, token(bob)) as nosy,
        ws_connect(http, url, token("ops", role="admin")) as admin,
    ):
        for type_ in ("subscribe", "subscribe_alerts"):
            await nosy.send(type_, {"userId": alice})
            error = await nosy.recv_type("error")
            assert error["data"]["code"] == "forbidden"
        await admin.subscribe(["profileViews"], user=alice)
        entry = await xadd_metrics(redis, alice, {"profileViews": 9})
        assert (await admin.recv_type("metrics_update"))["id"] == entry
        assert await nosy.until_pong() == []


async def test_unknown_metrics_are_named_and_the_known_ones_subscribed(
    http: ClientSession, gw: TestServer
) -> None:
    async with ws_connect(http, gw.make_url("/ws"), token(new_user())) as client:
        await client.send("subscribe", {"metrics": ["profileViews", "karma", "aura"]})
        error = await client.recv_type("error")
        assert error["data"]["code"] == "unknown_metric"
        assert error["data"]["metrics"] == ["aura", "karma"]
        ack = await client.recv_type("subscribed")
        assert ack["data"]["metrics"] == ["profileViews"]
        snapshot = await client.recv_type("metrics_update")
        assert list(snapshot["data"]["metrics"]) == ["profileViews"]


# --- abuse -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code", "detail"),
    [
        ("{not json", "malformed_json", "malformed"),
        ('{"type": "explode"}', "unknown_type", "explode"),
        (
            '{"type": "subscribe", "data": {"metrics": "views"}}',
            "invalid_message",
            "$.data.metrics",
        ),
        ('{"type": "resume", "data": {"lastEventId": "yesterday"}}', "invalid_message", "$.data"),
        ("[1, 2]", "unknown_type", "unknown message type"),
    ],
)
async def test_bad_frames_get_an_error_each_and_the_third_closes_1008(
    http: ClientSession, gw: TestServer, redis: Redis, frame: str, code: str, detail: str
) -> None:
    async with ws_connect(http, gw.make_url("/ws"), token(new_user())) as client:
        for _ in range(3):
            await client.ws.send_str(frame)
            error = await client.recv_type("error")
            assert error["data"]["code"] == code
            assert detail in error["data"]["message"]
        assert (await client.close_code())[0] == 1008
    await _still_served(http, gw, redis)


async def test_oversized_frames_are_refused_then_closed_with_1009(
    http: ClientSession, gw: TestServer, redis: Redis
) -> None:
    url = gw.make_url("/ws")
    padded = json.dumps({"type": "ping", "pad": "x" * 2000})  # over 1024, under 4 x 1024
    async with ws_connect(http, url, token(new_user())) as client:
        for _ in range(2):
            await client.ws.send_str(padded)
            error = await client.recv_type("error")
            assert error["data"]["code"] == "frame_too_large"
        # Still usable between two refusals.
        assert await client.until_pong() == []
        await client.ws.send_str(padded)
        assert (await client.recv_type("error"))["data"]["code"] == "frame_too_large"
        assert (await client.close_code())[0] == 1009
    async with ws_connect(http, url, token(new_user())) as client:
        await client.ws.send_str("x" * 5000)  # past 4 x the limit: cut off unread
        assert (await client.close_code())[0] == 1009
    await _still_served(http, gw, redis)


async def test_a_flood_is_ignored_past_the_rate_then_closed_with_1008(
    http: ClientSession, migrated: Settings, redis: Redis
) -> None:
    async with gateway(ws_settings(migrated, ws_max_client_rate=20)) as server:
        async with ws_connect(http, server.make_url("/ws"), token(new_user())) as client:
            for _ in range(100):
                await client.send("ping")
            types = []
            while True:
                message = await client.ws.receive(timeout=5)
                if message.type.name != "TEXT":
                    break
                types.append(json.loads(message.data)["type"])
            # 20 answered, the 21st told off, the rest of the second ignored, the 41st closes.
            assert types == ["pong"] * 20 + ["error"]
            assert client.ws.close_code == 1008
        await _still_served(http, server, redis)


async def test_a_peer_that_answers_no_ping_is_closed_with_4408_others_stay(
    http: ClientSession, migrated: Settings, redis: Redis
) -> None:
    async with gateway(ws_settings(migrated, ws_heartbeat_interval=1000)) as server:
        url = server.make_url("/ws")
        async with (
            ws_connect(http, url, token(new_user()), autoping=False) as silent,
            ws_connect(http, url, token(new_user())) as lively,
        ):
            # `lively` talks now and then (any frame proves life); `silent` reads nothing, so
            # it answers none of the server's pings.
            deadline = time.monotonic() + 3.6
            while time.monotonic() < deadline:
                assert await lively.until_pong() == []
                await asyncio.sleep(0.3)
            code, reason = await silent.close_code()
            assert (code, reason.startswith("heartbeat timeout")) == (4408, True)
            assert await lively.until_pong() == []


async def test_every_message_shape_is_answered(http: ClientSession, gw: TestServer) -> None:
    """The acknowledgements of each client message, as docs/websocket.md shows them."""
    user = new_user()
    async with ws_connect(http, gw.make_url("/ws"), token(user)) as client:
        await client.subscribe(["profileViews", "likes"], frequency=5)
        await client.send("unsubscribe", {"metrics": ["likes"]})
        unsubscribed = await client.recv_type("unsubscribed")
        assert unsubscribed["data"] == {"channel": "metrics", "userId": user, "metrics": ["likes"]}
        await client.send("subscribe_alerts")
        assert (await client.recv_type("subscribed"))["data"] == {
            "channel": "alerts",
            "userId": user,
        }
        await client.send("unsubscribe_alerts")
        assert (await client.recv_type("unsubscribed"))["data"]["channel"] == "alerts"
        await client.send("ping")
        assert "serverTime" in (await client.recv_type("pong"))["data"]
