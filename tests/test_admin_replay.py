"""DLQ replay where it is hard: on a Redis in cluster mode, where every script call and
command must keep its keys on one slot (cluster mode refuses anything else with CROSSSLOT, even
on a single node that owns every slot), and when the gateway loses Redis half-way through a
replay; each letter is still replayed exactly once.

The cluster is one `redis-server --cluster-enabled yes` started here, owning all 16384 slots,
so a plain client reaches every key without redirects; only db 0 exists in cluster mode.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.ops.admin import REPLAY_APPEND_LUA
from schemas.streams import DLQ_STREAM, backlog_key, events_stream
from tests.ops_support import bearer, flushed_redis, gateways, ops_settings
from tests.tcp_proxy import TcpProxy
from tests.test_admin import PARTITIONS, dead_letter, one_event_letter, stream_entries

_START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def cluster_node(tmp_path: Path) -> AsyncIterator[int]:
    """The port of a fresh one-node cluster; the server is stopped at the end."""
    port = _free_port()
    log = tmp_path / "redis.log"
    proc = await asyncio.create_subprocess_exec(
        "redis-server",
        "--port", str(port),
        # The bus defaults to port + 10000, which may be taken or past 65535.
        "--cluster-port", str(_free_port()),
        "--bind", "127.0.0.1",
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(tmp_path / "nodes.conf"),
        "--dir", str(tmp_path),
        "--logfile", str(log),
        "--save", "",
        "--appendonly", "no",
    )  # fmt: skip
    client = Redis(port=port)
    try:
        async with asyncio.timeout(_START_TIMEOUT_S):
            while True:
                try:
                    await client.ping()
                    break
                except RedisConnectionError:  # not listening yet
                    assert proc.returncode is None, log.read_text()
                    await asyncio.sleep(0.05)
            # Through a script: the typed client has no CLUSTER wrappers outside RedisCluster.
            await client.eval("return redis.call('CLUSTER', 'ADDSLOTSRANGE', 0, 16383)", 0)
            while b"cluster_state:ok" not in await client.eval(
                "return redis.call('CLUSTER', 'INFO')", 0
            ):
                await asyncio.sleep(0.05)
        yield port
    finally:
        await client.aclose()
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@pytest.fixture
async def cluster_redis(cluster_node: int) -> AsyncIterator[Redis]:
    client = Redis(port=cluster_node)
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_node_refuses_cross_slot_scripts(cluster_redis: Redis) -> None:
    """The premise: a script over `ia:dlq` and a partition stream, as replay once was, fails."""
    with pytest.raises(ResponseError, match="same slot"):  # CROSSSLOT
        await cluster_redis.eval("return 1", 2, DLQ_STREAM, events_stream(0))
    # ... while the append step's keys share the partition's slot.
    keys = ["ia:replayed:{0}:1-0", events_stream(0), "ia:backlog:{0}"]
    reply: Any = await cluster_redis.eval(REPLAY_APPEND_LUA, 3, *keys, 60, 1, "e", "p")
    assert reply[1] == 1


async def test_replay_on_a_cluster_appends_every_letter_once(
    cluster_node: int, cluster_redis: Redis
) -> None:
    letters = [one_event_letter(p % PARTITIONS) for p in range(6)]
    ids = await dead_letter(cluster_redis, *letters)
    async with gateways() as make:
        a = await make(redis_port=cluster_node, redis_db=0)
        b = await make(redis_port=cluster_node, redis_db=0)
        calls = [c.post("/admin/dlq/replay", json={"all": True}, headers=bearer()) for c in (a, b)]
        responses = await asyncio.gather(*calls)
        bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [200, 200], bodies
    replayed = [
        result["id"]
        for body in bodies
        for result in body["results"]
        if result["status"] == "replayed"
    ]
    assert sorted(replayed) == sorted(ids)  # each letter once, by one of the two calls
    assert await cluster_redis.xlen(DLQ_STREAM) == 0
    appended = [
        event.event_id
        for p in range(PARTITIONS)
        for entry in await stream_entries(cluster_redis, p)
        for event in entry
    ]
    assert sorted(appended) == sorted(letter.delivery.fields[0][0].decode() for letter in letters)


@pytest.fixture
async def ops_redis() -> AsyncIterator[Redis]:
    async with flushed_redis() as client:
        yield client


async def test_replay_cut_off_from_redis_half_way_is_completed_by_a_retry(
    ops_redis: Redis,
) -> None:
    """The gateway's Redis connection is cut while it replays: whatever it did last (an append
    whose XDEL never ran, a reply it never read) the retry appends nothing twice."""
    total = 1500
    letters = [one_event_letter(i % PARTITIONS) for i in range(total)]
    await dead_letter(ops_redis, *letters)
    settings = ops_settings()
    proxy = TcpProxy(settings.redis_host, settings.redis_port)
    await proxy.start()
    try:
        async with gateways() as make:
            client = await make(redis_port=proxy.port)
            replay = asyncio.create_task(
                client.post("/admin/dlq/replay", json={"all": True}, headers=bearer())
            )
            while await ops_redis.xlen(DLQ_STREAM) > total * 2 // 3:
                assert not replay.done(), "finished before the cut: raise `total`"
                await asyncio.sleep(0.002)
            await proxy.cut()
            cut_off = await replay
            assert cut_off.status == 503  # the operator sees the replay did not finish
            left = await ops_redis.xlen(DLQ_STREAM)
            assert 0 < left < total
            await proxy.restore()
            retry = await client.post("/admin/dlq/replay", json={"all": True}, headers=bearer())
            assert retry.status == 200
            assert (await retry.json())["replayed"] == left
    finally:
        await proxy.close()
    assert await ops_redis.xlen(DLQ_STREAM) == 0
    appended = [
        event.event_id
        for p in range(PARTITIONS)
        for entry in await stream_entries(ops_redis, p)
        for event in entry
    ]
    expected = [letter.delivery.fields[0][0].decode() for letter in letters]
    assert len(appended) == total and sorted(appended) == sorted(expected)
    counted = [await ops_redis.hget(backlog_key(p), "appended") for p in range(PARTITIONS)]
    assert sum(int(c or 0) for c in counted) == total
