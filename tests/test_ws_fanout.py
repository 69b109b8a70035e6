"""Fan-out over real sockets: who receives which update, how often, from how many gateways, and
what the Prometheus metrics say. Entries are appended to `ia:metrics` / `ia:alerts` exactly as
the worker and the alerting stage write them; test_ws_resume.py drives the real worker.

"Sees nothing" is checked with a ping: the server writes each entry to every socket before
reading the next, so once a watching socket has an update, every other socket either has it
too or never gets it, and its `pong` comes after.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from gateway.ws.frames import id_key
from schemas.metrics import CATALOGUE
from schemas.settings import Settings
from schemas.streams import METRICS_STREAM
from tests.ws_support import (
    RawWsClient,
    gateway,
    make_alert,
    metrics_fields,
    new_user,
    token,
    ws_connect,
    ws_settings,
    xadd_alert,
    xadd_metrics,
)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_an_update_reaches_its_user_and_watching_admins_only(
    http: ClientSession, gw: TestServer, redis: Redis
) -> None:
    alice, bob = new_user(), new_user()
    url = gw.make_url("/ws")
    async with (
        ws_connect(http, url, token(alice)) as alice_ws,
        ws_connect(http, url, token(bob)) as bob_ws,
        ws_connect(http, url, token("ops", role="admin")) as admin_ws,
    ):
        await alice_ws.subscribe(["profileViews", "likes"])
        await bob_ws.subscribe(["profileViews", "likes"])
        await admin_ws.subscribe(["profileViews"], user=alice)
        entry = await xadd_metrics(redis, alice, {"profileViews": 5, "likes": 2})
        mine = await alice_ws.recv_type("metrics_update")
        watched = await admin_ws.recv_type("metrics_update")
        assert mine["id"] == watched["id"] == entry
        assert mine["data"]["userId"] == watched["data"]["userId"] == alice
        assert mine["data"]["metrics"] == {"profileViews": 5, "likes": 2}
        # The admin asked for profileViews only: a payload of its own, nothing more.
        assert watched["data"]["metrics"] == {"profileViews": 5}
        assert mine["data"]["lagMs"] >= 0 and mine["data"]["asOf"].endswith("Z")
        assert await bob_ws.until_pong() == []


async def test_subscribe_sends_current_values_at_once(
    http: ClientSession, gw: TestServer, redis: Redis
) -> None:
    user = new_user()
    before = await xadd_metrics(redis, new_user(), {"profileViews": 1})
    await asyncio.sleep(0.2)  # the fan-out has read it by now
    async with ws_connect(http, gw.make_url("/ws"), token(user)) as client:
        ack, snapshot = await client.subscribe()  # no list: the whole catalogue
        assert len(ack["data"]["metrics"]) >= 10
        assert set(snapshot["data"]["metrics"]) == set(ack["data"]["metrics"])
        # A user without data: zero counts, no rate. The id is the stream position it covers.
        assert snapshot["data"]["metrics"]["profileViews"] == 0
        assert snapshot["data"]["metrics"]["engagementRate"] is None
        newest: Any = await redis.xrevrange(METRICS_STREAM, count=1)
        latest = newest[0][0].decode()
        assert id_key(before) <= id_key(snapshot["id"]) <= id_key(latest)


async def test_update_frequency_coalesces_to_the_latest_value_once_per_period(
    http: ClientSession, gw: TestServer, redis: Redis
) -> None:
    user = new_user()
    dropped = sample("ia_ws_dropped_updates_total", reason="frequency")
    async with ws_connect(http, gw.make_url("/ws"), token(user)) as client:
        ack, _ = await client.subscribe(["profileViews"], frequency=1)
        assert ack["data"]["updateFrequency"] == 1
        started = time.monotonic()
        ids = [await xadd_metrics(redis, user, {"profileViews": v}) for v in range(1, 6)]
        update = await client.recv_type("metrics_update")
        waited = time.monotonic() - started
        assert (update["id"], update["data"]["metrics"]) == (ids[-1], {"profileViews": 5})
        assert 0.7 < waited < 3, waited  # held to the end of the period, not sent at once
        assert await client.until_pong() == []
    assert sample("ia_ws_dropped_updates_total", reason="frequency") - dropped == 4


async def test_update_frequency_is_bounded_by_settings(
    http: ClientSession, migrated: Settings, redis: Redis
) -> None:
    settings = ws_settings(migrated, ws_min_update_frequency=2.0, ws_max_update_frequency=60.0)
    async with gateway(settings) as server:
        async with ws_connect(http, server.make_url("/ws"), token(new_user())) as client:
            ack, _ = await client.subscribe(["likes"], frequency=0)
            assert ack["data"]["updateFrequency"] == 2.0
            ack, _ = await client.subscribe(["likes"], frequency=3600)
            assert ack["data"]["updateFrequency"] == 60.0


async def test_unsubscribe_stops_updates(http: ClientSession, gw: TestServer, redis: Redis) -> None:
    user = new_user()
    url = gw.make_url("/ws")
    async with (
        ws_connect(http, url, token(user)) as client,
        ws_connect(http, url, token(user)) as sentinel,
    ):
        await client.subscribe(["profileViews", "likes"])
        await sentinel.subscribe(["profileViews", "likes"])
        await client.send("unsubscribe", {"metrics": ["likes"]})
        assert (await client.recv_type("unsubscribed"))["data"]["metrics"] == ["likes"]
        await xadd_metrics(redis, user, {"likes": 3})
        await sentinel.recv_type("metrics_update")
        assert await client.until_pong() == []
        await xadd_metrics(redis, user, {"profileViews": 4, "likes": 4})
        update = await client.recv_type("metrics_update")
        assert update["data"]["metrics"] == {"profileViews": 4}
        await client.send("unsubscribe")  # everything
        assert (await client.recv_type("unsubscribed"))["data"]["metrics"] == ["profileViews"]
        await xadd_metrics(redis, user, {"profileViews": 5})
        await sentinel.recv_type("metrics_update")
        await sentinel.recv_type("metrics_update")
        assert await client.until_pong() == []


async def test_alerts_arrive_only_after_subscribe_alerts(
    http: ClientSession, gw: TestServer, redis: Redis
) -> None:
    user = new_user()
    url = gw.make_url("/ws")
    async with (
        ws_connect(http, url, token(user)) as client,
        ws_connect(http, url, token("ops", role="admin")) as sentinel,
    ):
        await client.subscribe(["profileViews"])
        await sentinel.send("subscribe_alerts", {"userId": user})
        await sentinel.recv_type("subscribed")
        await xadd_alert(redis, make_alert(user))
        await sentinel.recv_type("alert_triggered")
        assert await client.until_pong() == []

        await client.send("subscribe_alerts")
        assert (await client.recv_type("subscribed"))["data"] == {
            "channel": "alerts",
            "userId": user,
        }
        alert = make_alert(user, value=130.0, severity="critical")
        entry = await xadd_alert(redis, alert)
        received = await client.recv_type("alert_triggered")
        assert received["id"] == entry
        data = received["data"]
        assert (data["alertId"], data["userId"], data["value"]) == (alert.alert_id, user, 130.0)
        assert (data["severity"], data["threshold"], data["metric"]) == (
            "critical",
            100.0,
            "profileViews",
        )
        assert data["asOf"] == alert.triggered_at and data["lagMs"] >= 0
        # Another user's alert is not ours.
        await xadd_alert(redis, make_alert(new_user()))
        await client.send("unsubscribe_alerts")
        await client.recv_type("unsubscribed")
        await xadd_alert(redis, make_alert(user))
        await sentinel.recv_type("alert_triggered")
        await sentinel.recv_type("alert_triggered")
        assert await client.until_pong() == []


async def test_two_gateways_each_deliver_every_update(
    http: ClientSession, migrated: Settings, redis: Redis
) -> None:
    user = new_user()
    async with gateway(ws_settings(migrated)) as one, gateway(ws_settings(migrated)) as two:
        async with (
            ws_connect(http, one.make_url("/ws"), token(user)) as on_one,
            ws_connect(http, two.make_url("/ws"), token(user)) as on_two,
        ):
            await on_one.subscribe(["profileViews"])
            await on_two.subscribe(["profileViews"])
            ids = [await xadd_metrics(redis, user, {"profileViews": v}) for v in (1, 2, 3)]
            for client in (on_one, on_two):
                got = [await client.recv_type("metrics_update") for _ in ids]
                assert [m["id"] for m in got] == ids
                assert [m["data"]["metrics"]["profileViews"] for m in got] == [1, 2, 3]


async def test_a_client_that_stops_reading_does_not_hold_up_the_others(
    http: ClientSession, migrated: Settings, redis: Redis
) -> None:
    """The slow socket's unsent values are coalesced (latest per metric wins), the fast one
    gets every update, and once the slow one reads again it ends on the newest values."""
    user = new_user()
    names = sorted(CATALOGUE)
    dropped = sample("ia_ws_dropped_updates_total", reason="backpressure")
    async with gateway(ws_settings(migrated, ws_send_queue_bytes=4096)) as server:
        url = server.make_url("/ws")
        slow = await RawWsClient.connect(url, token(user))
        try:
            async with ws_connect(http, url, token(user)) as fast:
                await slow.send_json({"type": "subscribe", "data": {"metrics": names}})
                assert (await slow.recv_json())["type"] == "subscribed"
                assert (await slow.recv_json())["data"]["snapshot"] is True
                await fast.subscribe(names)
                # Paced like a busy user's stream: the fast client reads each step, the slow
                # one reads nothing, ~900 KB for it in all.
                count, step = 2000, 10
                for first in range(1, count + 1, step):
                    async with redis.pipeline(transaction=False) as pipe:
                        for i in range(first, first + step):
                            values = dict.fromkeys(names, i)
                            _ = pipe.xadd(METRICS_STREAM, metrics_fields(user, values))
                        await pipe.execute()
                    for i in range(first, first + step):
                        update = await fast.recv_type("metrics_update")
                        assert update["data"]["metrics"]["likes"] == i
                got: list[dict[str, Any]] = []
                while not got or got[-1]["data"]["metrics"]["likes"] != count:
                    got.append(await slow.recv_json())
        finally:
            await slow.close()
    assert all(m["type"] == "metrics_update" for m in got)
    assert len(got) < count  # intermediate values were dropped, the latest kept
    keys = [tuple(map(int, m["id"].split("-"))) for m in got]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert got[-1]["data"]["metrics"] == dict.fromkeys(names, count)
    assert sample("ia_ws_dropped_updates_total", reason="backpressure") > dropped


async def test_prometheus_metrics_follow_the_sessions(
    http: ClientSession, gw: TestServer, redis: Redis
) -> None:
    user = new_user()
    connections = sample("ia_ws_connections")
    sent = sample("ia_ws_messages_sent_total", type="metrics_update")
    latencies = sample("ia_ws_fanout_latency_seconds_count")
    async with ws_connect(http, gw.make_url("/ws"), token(user)) as client:
        await client.subscribe(["profileViews"])
        assert sample("ia_ws_connections") == connections + 1
        assert sample("ia_ws_subscriptions", channel="metrics") >= 1
        await xadd_metrics(redis, user, {"profileViews": 1})
        await client.recv_type("metrics_update")
        assert sample("ia_ws_messages_sent_total", type="metrics_update") == sent + 2
        assert sample("ia_ws_fanout_latency_seconds_count") == latencies + 1
        async with http.get(gw.make_url("/metrics")) as response:
            text = await response.text()
        assert "ia_ws_connections" in text and "ia_ws_fanout_latency_seconds_bucket" in text
    for _ in range(50):  # the server notices the close a moment after the client
        if sample("ia_ws_connections") == connections:
            break
        await asyncio.sleep(0.02)
    assert sample("ia_ws_connections") == connections
