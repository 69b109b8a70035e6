"""The fan-out's life: a real `analytics gateway` process on SIGTERM, and the reader surviving
what docs/architecture.md ("Costs that shaped the design") warns about (a stalled event loop,
a Redis connection cut) without losing an entry. Faults are real: the loop is blocked, the TCP
connection is cut by a proxy."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from typing import Any

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from gateway.keys import FANOUT, REDIS, SETTINGS
from gateway.ws import server as ws
from gateway.ws.fanout import Fanout
from gateway.ws.replay import stream_bounds
from schemas.settings import Settings
from sinks.db import create_pool
from tests.tcp_proxy import TcpProxy
from tests.ws_support import (
    WS_REDIS_DB,
    gateway,
    new_user,
    token,
    ws_connect,
    ws_settings,
    xadd_metrics,
)


def _errors(kind: str) -> float:
    return REGISTRY.get_sample_value("ia_ws_reader_errors_total", {"kind": kind}) or 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_sigterm_notifies_every_socket_closes_1001_and_exits_0(
    http: ClientSession, migrated: Settings
) -> None:
    http_port, ws_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "APP_ENV": "test",
        "LOG_LEVEL": "warning",
        "TIMESCALE_HOST": migrated.timescale_host,
        "TIMESCALE_PORT": str(migrated.timescale_port),
        "TIMESCALE_USER": migrated.timescale_user,
        "TIMESCALE_PASSWORD": migrated.timescale_password,
        "TIMESCALE_DATABASE": migrated.timescale_database,
        "REDIS_HOST": migrated.redis_host,
        "REDIS_PORT": str(migrated.redis_port),
        "REDIS_DB": str(WS_REDIS_DB),
        "JWT_SECRET": migrated.jwt_secret,
        "HTTP_PORT": str(http_port),
        "WS_PORT": str(ws_port),
        "RATE_LIMIT_WS_SUBJECT": "0",
        "RATE_LIMIT_WS_IP": "0",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline.cli", "gateway", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await _until_listening(http, f"http://127.0.0.1:{http_port}/health")
        user = new_user()
        urls = [f"http://127.0.0.1:{ws_port}/", f"http://127.0.0.1:{http_port}/ws"]
        async with (
            ws_connect(http, urls[0], token(user)) as on_ws_port,
            ws_connect(http, urls[1], token(user)) as on_http_port,
        ):
            for client in (on_ws_port, on_http_port):
                await client.subscribe(["profileViews"])
            process.send_signal(signal.SIGTERM)
            for client in (on_ws_port, on_http_port):
                notice = await client.recv_type("system_notification", wait=10)
                assert notice["data"]["code"] == "shutdown"
                assert (await client.close_code(wait=10))[0] == 1001
        async with asyncio.timeout(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        assert process.stderr is not None
        await process.stderr.read()


async def _until_listening(http: ClientSession, url: str) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.1)


async def test_the_reader_survives_a_stalled_event_loop(
    http: ClientSession, migrated: Settings, redis: Redis
) -> None:
    """A loop blocked past the reader's socket timeout makes redis-py raise TimeoutError on
    the pending XREAD; the supervisor logs, counts and restarts it, and updates flow again."""
    settings = ws_settings(migrated)
    reader = Redis.from_url(settings.redis_url, socket_timeout=0.3)
    pool = await create_pool(settings)

    async def get_pool() -> Any:
        return pool

    fanout = Fanout(settings, redis, reader, get_pool, block_ms=100)
    app = web.Application()
    app[SETTINGS], app[REDIS], app[FANOUT] = settings, redis, fanout
    app.router.add_get("/ws", ws.handler)
    server = TestServer(app)
    await fanout.start()
    await server.start_server()
    try:
        user = new_user()
        async with ws_connect(http, server.make_url("/ws"), token(user)) as client:
            await client.subscribe(["profileViews"])
            before = _errors("TimeoutError")
            time.sleep(1.0)  # noqa: ASYNC251 - the point: every task stalls, the reader too
            await asyncio.sleep(0.5)
            assert _errors("TimeoutError") > before
            entry = await xadd_metrics(redis, user, {"profileViews": 11})
            update = await client.recv_type("metrics_update")
            assert (update["id"], update["data"]["metrics"]) == (entry, {"profileViews": 11})
    finally:
        await server.close()
        await fanout.stop()
        await reader.aclose()
        await pool.close()


async def test_the_reader_survives_a_cut_connection_and_misses_nothing(
    http: ClientSession, migrated: Settings, redis: Redis
) -> None:
    proxy = TcpProxy(migrated.redis_host, migrated.redis_port)
    await proxy.start()
    try:
        async with gateway(ws_settings(migrated, redis_port=proxy.port)) as server:
            user = new_user()
            async with ws_connect(http, server.make_url("/ws"), token(user)) as client:
                await client.subscribe(["profileViews"])
                before = _errors("ConnectionError")
                await proxy.cut()
                # Appended while the gateway cannot read: delivered after, in order.
                missed = [await xadd_metrics(redis, user, {"profileViews": v}) for v in (1, 2)]
                await asyncio.sleep(0.5)
                assert _errors("ConnectionError") > before
                await proxy.restore()
                got = [await client.recv_type("metrics_update", wait=10) for _ in missed]
                assert [m["id"] for m in got] == missed
                assert [m["data"]["metrics"]["profileViews"] for m in got] == [1, 2]
    finally:
        await proxy.close()


async def test_stream_bounds_tell_when_history_after_an_id_is_gone(redis: Redis) -> None:
    key = f"ws-test:bounds:{new_user()}"
    try:
        ids: list[Any] = [await redis.xadd(key, {"n": i}, id=f"{i}-0") for i in range(1, 6)]
        assert [i.decode() for i in ids] == ["1-0", "2-0", "3-0", "4-0", "5-0"]
        bounds = await stream_bounds(redis, key)
        assert bounds is not None and not bounds.lost_after((0, 0))  # nothing ever removed
        await redis.xtrim(key, minid="3-0", approximate=False)  # 1 and 2 trimmed
        bounds = await stream_bounds(redis, key)
        assert bounds is not None and bounds.first == (3, 0)
        assert bounds.lost_after((1, 0))  # 2-0 was after it, and is gone
        assert not bounds.lost_after((3, 0)) and not bounds.lost_after((5, 0))
        assert bounds.lost_after((9, 0))  # never an id of this stream
        await redis.xdel(key, "4-0")
        bounds = await stream_bounds(redis, key)
        assert bounds is not None and bounds.lost_after((3, 0)) and not bounds.lost_after((4, 0))
        await redis.xtrim(key, maxlen=0, approximate=False)
        bounds = await stream_bounds(redis, key)
        assert bounds is not None and bounds.first is None
        assert bounds.lost_after((4, 0)) and not bounds.lost_after((5, 0))
        assert await stream_bounds(redis, f"{key}:missing") is None
    finally:
        await redis.delete(key)
