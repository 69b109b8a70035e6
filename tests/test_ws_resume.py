"""The whole path and the way back: events POSTed to the ingest API, processed by a real worker
(validate, enrich, COPY into TimescaleDB, publish to `ia:metrics`), delivered to sockets; and a
client that reconnects with `lastEventId` receives what it missed, in order, once, or a
`resync` with current values from TimescaleDB when the stream no longer has it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from gateway.ws.frames import id_key
from pipeline.worker import run_worker
from schemas.settings import Settings
from schemas.streams import METRICS_STREAM
from tests.ws_support import (
    gateway,
    make_alert,
    new_user,
    token,
    ws_connect,
    ws_settings,
    xadd_alert,
    xadd_metrics,
)

# The trimmed-stream test deletes entries, which would make any concurrent resume in db 11
# (another run of these tests) see a resync: it gets a database of its own.
TRIM_REDIS_DB = 9

Post = Callable[..., Coroutine[Any, Any, None]]


def _settings(migrated: Settings, **overrides: Any) -> Settings:
    # A short batch wait and claim time: a batch left by a stopped worker of another run is
    # taken over quickly.
    return ws_settings(migrated, batch_max_wait_ms=20, claim_idle_ms=500, **overrides)


@pytest.fixture
async def pipeline(migrated: Settings) -> AsyncIterator[TestServer]:
    """A gateway and a worker on db 11."""
    settings = _settings(migrated)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop))
    try:
        async with gateway(settings) as server:
            yield server
    finally:
        stop.set()
        await worker


def poster(http: ClientSession, server: TestServer) -> Post:
    headers = {"Authorization": f"Bearer {token('ingest-bot', role='producer')}"}

    async def post(user: str, type_: str = "profile_view", value: float = 1) -> None:
        """One event, answered once it is committed (so each POST is its own batch)."""
        event = {"user_id": user, "type": type_, "value": value}
        url = server.make_url("/ingest/event")
        async with http.post(url, json=event, headers=headers, params={"wait": "true"}) as r:
            assert r.status == 200, await r.text()

    return post


async def test_an_ingested_event_reaches_its_subscribers_with_the_right_value(
    http: ClientSession, pipeline: TestServer
) -> None:
    alice, bob = new_user(), new_user()
    url = pipeline.make_url("/ws")
    async with (
        ws_connect(http, url, token(alice)) as alice_ws,
        ws_connect(http, url, token(bob)) as bob_ws,
        ws_connect(http, url, token("ops", role="admin")) as admin_ws,
    ):
        _, snapshot = await alice_ws.subscribe(["profileViews", "influenceScore"])
        assert snapshot["data"]["metrics"]["profileViews"] == 0
        await bob_ws.subscribe(["profileViews", "influenceScore"])
        await admin_ws.subscribe(["profileViews"], user=alice)
        await poster(http, pipeline)(alice, value=3)
        update = await alice_ws.recv_type("metrics_update", wait=15)
        assert update["data"]["userId"] == alice
        assert update["data"]["metrics"]["profileViews"] == 3
        assert 0 < update["data"]["metrics"]["influenceScore"] < 100
        assert 0 <= update["data"]["lagMs"] < 10_000
        watched = await admin_ws.recv_type("metrics_update", wait=15)
        assert (watched["id"], watched["data"]["metrics"]) == (update["id"], {"profileViews": 3})
        assert await bob_ws.until_pong() == []


async def test_resume_replays_every_missed_update_in_order_once(
    http: ClientSession, pipeline: TestServer, redis: Redis
) -> None:
    user, other = new_user(), new_user()
    post = poster(http, pipeline)
    url = pipeline.make_url("/ws")
    async with ws_connect(http, url, token(user)) as first:
        await first.subscribe(["profileViews"])
        await post(user)
        last_seen = (await first.recv_type("metrics_update", wait=15))["id"]
    for _ in range(3):  # missed while disconnected; another user's events in between
        await post(user)
        await post(other)
    missed = await _entries_for(redis, user, after=last_seen, count=3)
    async with ws_connect(http, url, token(user)) as again:
        _, snapshot = await again.subscribe(["profileViews"])
        assert snapshot["data"]["metrics"]["profileViews"] == 4
        await again.send("resume", {"lastEventId": last_seen})
        replayed = [await again.recv_type("metrics_update") for _ in missed]
        assert [m["id"] for m in replayed] == missed
        assert [m["data"]["metrics"]["profileViews"] for m in replayed] == [2, 3, 4]
        assert all(m["data"]["replay"] is True for m in replayed)
        resumed = await again.recv_type("system_notification")
        assert resumed["data"]["code"] == "resumed"
        assert await again.until_pong() == []  # nothing twice
        await post(user)
        live = await again.recv_type("metrics_update", wait=15)
        assert live["data"]["metrics"]["profileViews"] == 5 and "replay" not in live["data"]
        assert id_key(live["id"]) > id_key(missed[-1])


async def test_resume_replays_alerts_and_metrics_interleaved_in_id_order(
    http: ClientSession, migrated: Settings, redis: Redis
) -> None:
    user = new_user()
    async with gateway(ws_settings(migrated)) as server:
        async with ws_connect(http, server.make_url("/ws"), token(user)) as client:
            await client.subscribe(["likes"])
            await client.send("subscribe_alerts")
            await client.recv_type("subscribed")
            start = await xadd_metrics(redis, user, {"likes": 1})
            await client.recv_type("metrics_update")
            await asyncio.sleep(0.005)  # alerts of lastEventId's own millisecond are resent
            added = [
                (await xadd_metrics(redis, user, {"likes": 2}), "metrics_update"),
                (await xadd_alert(redis, make_alert(user)), "alert_triggered"),
                (await xadd_metrics(redis, user, {"likes": 3}), "metrics_update"),
                (await xadd_alert(redis, make_alert(user)), "alert_triggered"),
            ]
            for _ in added:  # the live copies
                await client.recv()
            await client.send("resume", {"lastEventId": start})
            replayed = [await client.recv() for _ in added]
            # In id order; the two streams' ids may be equal (the same millisecond and
            # sequence), and then the metrics entry comes first.
            in_order = sorted(added, key=lambda a: (id_key(a[0]), a[1] != "metrics_update"))
            assert [(m["id"], m["type"]) for m in replayed] == in_order
            assert all(m["data"]["replay"] for m in replayed)
            assert (await client.recv_type("system_notification"))["data"]["code"] == "resumed"
            assert await client.until_pong() == []


async def test_resume_from_an_unknown_id_resyncs(
    http: ClientSession, migrated: Settings, redis: Redis
) -> None:
    user = new_user()
    async with gateway(ws_settings(migrated)) as server:
        async with ws_connect(http, server.make_url("/ws"), token(user)) as client:
            await client.subscribe(["likes"])
            # An id the stream never produced (another deployment's, or from the future).
            await client.send("resume", {"lastEventId": "99999999999999-0"})
            notice = await client.recv_type("system_notification")
            assert notice["data"]["code"] == "resync"
            values = await client.recv_type("metrics_update")
            assert values["data"]["snapshot"] is True
            assert values["data"]["metrics"] == {"likes": 0}


async def test_resume_with_a_trimmed_id_resyncs_from_timescaledb(
    http: ClientSession, migrated: Settings
) -> None:
    settings = _settings(migrated, redis_db=TRIM_REDIS_DB)
    user = new_user()
    redis = Redis.from_url(settings.redis_url)
    await redis.flushdb()
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop))
    try:
        async with gateway(settings) as server:
            post = poster(http, server)
            url = server.make_url("/ws")
            async with ws_connect(http, url, token(user)) as first:
                await first.subscribe(["profileViews", "likes"])
                await post(user, value=2)
                last_seen = (await first.recv_type("metrics_update", wait=15))["id"]
            await post(user, value=5)
            await post(user, "post_like", value=4)
            newest = (await _entries_for(redis, user, after=last_seen, count=2))[-1]
            ms, seq = id_key(newest)
            await redis.xtrim(METRICS_STREAM, minid=f"{ms}-{seq + 1}", approximate=False)
            assert await redis.xlen(METRICS_STREAM) == 0
            async with ws_connect(http, url, token(user)) as again:
                await again.subscribe(["profileViews", "likes"])
                await again.send("resume", {"lastEventId": last_seen})
                notice = await again.recv_type("system_notification")
                assert notice["data"]["code"] == "resync"
                values = await again.recv_type("metrics_update")
                assert values["data"]["snapshot"] is True
                assert values["data"]["metrics"] == {"profileViews": 7, "likes": 4}
                assert await again.until_pong() == []
    finally:
        stop.set()
        await worker
        await redis.flushdb()
        await redis.aclose()


async def _entries_for(redis: Redis, user: str, *, after: str, count: int) -> list[str]:
    """Ids of the `count` `ia:metrics` entries after `after` that carry an update for `user`.

    Polled: `?wait=true` answers at the commit, and the worker appends the entry just after.
    """
    async with asyncio.timeout(10):
        while True:
            raw: Any = await redis.xrange(METRICS_STREAM, min=f"({after}")
            ids = [
                entry_id.decode()
                for entry_id, fields in raw
                if any(u["userId"] == user for u in orjson.loads(fields[b"updates"]))
            ]
            if len(ids) >= count:
                assert len(ids) == count, ids
                return ids
            await asyncio.sleep(0.02)
