"""The real worker under failure: TimescaleDB cut away mid-stream (through a TCP proxy),
SIGTERM with a batch in hand, and replicas killed with SIGKILL mid-batch. Nothing is mocked:
the worker is `pipeline.worker.run_worker` in-process or `analytics worker` as a subprocess,
on the real Redis and TimescaleDB.

These tests use their own Redis database (REDIS_DB), since other modules flush the default one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as redis
from redis.exceptions import ResponseError

from gateway.auth import mint_token
from pipeline.worker import open_redis, run_worker
from schemas.events import StreamEvent, stream_event_decoder
from schemas.settings import Settings
from schemas.streams import DLQ_STREAM, PROCESSOR_GROUP, backlog_key, events_stream
from sinks.db import connect
from tests.streams_helpers import append, make_event, read_stream
from tests.tcp_proxy import TcpProxy

# Redis databases in use: 15 most test modules, 10 ops tests, 11 WebSocket tests, 12 load
# benchmarks, 13 test_runner.py. A flush by anyone else would fake a drained backlog, so the
# tests keep a sentinel key and fail loudly when it disappears.
REDIS_DB = 14
SENTINEL = "test:worker_failures:sentinel"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def env(
    migrated: Settings,
) -> AsyncIterator[tuple[Settings, redis.Redis, asyncpg.Connection]]:
    s = dataclasses.replace(migrated, redis_db=REDIS_DB, batch_max_wait_ms=50)
    client = open_redis(s)
    await client.flushdb()
    await client.set(SENTINEL, 1)
    conn = await connect(s)
    yield s, client, conn
    await conn.close()
    await client.flushdb()
    await client.aclose()


# -- observing the pipeline -------------------------------------------------------------------


async def _eventually(check: Callable[[], Awaitable[bool]], limit_s: float) -> None:
    async with asyncio.timeout(limit_s):
        while not await check():
            await asyncio.sleep(0.05)


async def _backlog(s: Settings, client: redis.Redis) -> tuple[int, int]:
    """(appended, acked) events over every partition."""
    appended = acked = 0
    for p in range(s.stream_partitions):
        h: Any = await client.hgetall(backlog_key(p))
        appended += int(h.get(b"appended", 0))
        acked += int(h.get(b"acked", 0))
    return appended, acked


async def _pending(s: Settings, client: redis.Redis) -> int:
    """Entries delivered to some consumer of the processor group and not acknowledged."""
    total = 0
    for p in range(s.stream_partitions):
        try:
            summary: Any = await client.xpending(events_stream(p), PROCESSOR_GROUP)
        except ResponseError:  # no stream or group yet
            continue
        total += int(summary["pending"])
    return total


async def _pending_by_consumer(s: Settings, client: redis.Redis) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in range(s.stream_partitions):
        try:
            summary: Any = await client.xpending(events_stream(p), PROCESSOR_GROUP)
        except ResponseError:
            continue
        for c in summary["consumers"] or []:
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            out[name] = out.get(name, 0) + int(c["pending"])
    return out


async def _drained(s: Settings, client: redis.Redis) -> bool:
    assert await client.exists(SENTINEL), f"someone else flushed Redis db {s.redis_db}"
    appended, acked = await _backlog(s, client)
    return appended == acked and await _pending(s, client) == 0


async def _stored(conn: asyncpg.Connection, users: list[str]) -> tuple[int, int]:
    """(rows, distinct event ids) in real_time_events for `users`."""
    row: Any = await conn.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT event_id) AS d "
        "FROM real_time_events WHERE user_id = ANY($1)",
        users,
    )
    return int(row["n"]), int(row["d"])


async def _stored_ids(conn: asyncpg.Connection, users: list[str]) -> list[str]:
    rows = await conn.fetch("SELECT event_id FROM real_time_events WHERE user_id = ANY($1)", users)
    return [r["event_id"] for r in rows]


def _users(prefix: str, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{prefix}-{tag}-{i}" for i in range(n)]


def _event(user: str, i: int) -> StreamEvent:
    kind = ("profile_view", "search_appearance", "post_impression", "post_like")[i % 4]
    props = {"post_id": f"p{i % 7}"} if kind.startswith("post_") else {}
    return make_event(user, kind, value=1 + i % 3, properties=props)


# -- 1. TimescaleDB unreachable for a while ---------------------------------------------------


async def test_worker_rides_out_a_database_outage_without_losing_or_repeating_events(
    env: tuple[Settings, redis.Redis, asyncpg.Connection], caplog: pytest.LogCaptureFixture
) -> None:
    base, client, conn = env
    proxy = TcpProxy(base.timescale_host, base.timescale_port)
    await proxy.start()
    s = dataclasses.replace(base, timescale_port=proxy.port)
    users = _users("outage", 8)
    appended: list[StreamEvent] = []
    appending = True

    async def producer() -> None:
        i = 0
        while appending:
            chunk = [_event(users[(i + k) % len(users)], i + k) for k in range(40)]
            await append(client, s, chunk)
            appended.extend(chunk)
            i += 40
            await asyncio.sleep(0.05)

    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(s, stop))
    feeder = asyncio.create_task(producer())
    try:
        # Some events stored through the proxy first.
        await _eventually(lambda: _some_stored(conn, users), limit_s=15)
        await proxy.cut()
        cut_at = time.monotonic()
        connections_before = proxy.accepted
        await asyncio.sleep(0.5)  # a commit in flight at the cut has landed or failed by now
        rows_early_in_outage = (await _stored(conn, users))[0]
        samples: list[tuple[int, int, int]] = []  # (appended, acked) events, pending entries
        while time.monotonic() - cut_at < 3.0:
            samples.append((*await _backlog(s, client), await _pending(s, client)))
            await asyncio.sleep(0.25)
        rows_late_in_outage = (await _stored(conn, users))[0]
        await proxy.restore()
        appending = False
        await feeder
        await _eventually(lambda: _drained(s, client), limit_s=30)
        assert not worker.done()  # it recovered by itself, nobody restarted it
    finally:
        appending = False
        stop.set()
        await asyncio.gather(feeder, return_exceptions=True)
        await worker
        await proxy.close()

    # While the database was unreachable nothing was stored and nothing acknowledged: the
    # entries read stayed pending while more were appended.
    assert rows_late_in_outage == rows_early_in_outage
    assert len({acked for _, acked, _ in samples}) == 1
    assert all(appended_n > acked and pending > 0 for appended_n, acked, pending in samples)
    assert samples[-1][0] > samples[0][0]
    assert proxy.accepted > connections_before  # the worker reconnected after the outage
    expected = {e.event_id for e in appended}
    assert len(expected) == len(appended) > 200
    assert await _stored(conn, users) == (len(expected), len(expected))
    assert set(await _stored_ids(conn, users)) == expected
    assert await read_stream(client, DLQ_STREAM) == []
    retried = [r for r in caplog.records if r.getMessage() == "batch failed, will retry"]
    assert retried  # the outage was seen, and survived, as transient failures


async def _some_stored(conn: asyncpg.Connection, users: list[str]) -> bool:
    return (await _stored(conn, users))[0] > 0


# -- worker subprocesses ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker_env(s: Settings, **extra: str) -> dict[str, str]:
    """A clean environment: only what the settings of this test say, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(
        APP_ENV="test",
        LOG_LEVEL="info",
        TIMESCALE_HOST=s.timescale_host,
        TIMESCALE_PORT=str(s.timescale_port),
        TIMESCALE_USER=s.timescale_user,
        TIMESCALE_PASSWORD=s.timescale_password,
        TIMESCALE_DATABASE=s.timescale_database,
        REDIS_HOST=s.redis_host,
        REDIS_PORT=str(s.redis_port),
        REDIS_DB=str(s.redis_db),
        STREAM_PARTITIONS=str(s.stream_partitions),
        METRICS_PORT=str(_free_port()),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> list[dict[str, Any]]:
        # JSON lines on stderr; a line still being written (no newline yet) is left for later.
        lines = self.log_path.read_bytes().split(b"\n")[:-1]
        return [orjson.loads(line) for line in lines if line.startswith(b"{")]

    def messages(self) -> list[str]:
        return [str(e.get("message")) for e in self.log()]

    def owns(self, consumer: str) -> bool:
        """Consumer names are host-pid-suffix (pipeline.runner.consumer_name)."""
        return f"-{self.pid}-" in consumer

    async def exit_code(self, limit_s: float) -> int:
        async with asyncio.timeout(limit_s):
            while (code := self.proc.poll()) is None:
                await asyncio.sleep(0.05)
        return code


@dataclass
class Workers:
    """`analytics` processes of one test; whatever is left is killed at teardown."""

    settings: Settings
    directory: Path
    all: list[Worker] = field(default_factory=list)  # workers, killed or not
    others: list[Worker] = field(default_factory=list)  # gateways

    def start(self, command: str = "worker", **extra: str) -> Worker:
        log_path = self.directory / f"{command}-{len(self.all) + len(self.others)}.log"
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", command],
            cwd=ROOT,
            env=_worker_env(self.settings, **extra),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        w = Worker(proc, log_path, log_file)
        if command == "worker":
            self.all.append(w)
        else:
            self.others.append(w)
        return w

    @property
    def alive(self) -> list[Worker]:
        return [w for w in self.all if w.proc.poll() is None]

    async def started(
        self, w: Worker, ready: str = "consumer started", limit_s: float = 30
    ) -> None:
        async def up() -> bool:
            if w.proc.poll() is not None:
                raise AssertionError(f"{w.log_path.name} exited early: {w.log_path.read_text()}")
            return ready in w.messages()

        await _eventually(up, limit_s)

    def close(self) -> None:
        for w in self.all + self.others:
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait()
            w.log_file.close()


@pytest.fixture
def workers(
    env: tuple[Settings, redis.Redis, asyncpg.Connection], tmp_path: Path
) -> Iterator[Workers]:
    ws = Workers(env[0], tmp_path)
    yield ws
    ws.close()


# -- 2. SIGTERM with a batch in hand ----------------------------------------------------------


async def test_sigterm_finishes_the_batch_in_hand_and_exits_cleanly(
    env: tuple[Settings, redis.Redis, asyncpg.Connection], workers: Workers
) -> None:
    s, client, conn = env
    users = _users("sigterm", 6)
    w = workers.start(BATCH_MAX_WAIT_MS="1000")
    await workers.started(w)
    events = [_event(users[i % len(users)], i) for i in range(600)]
    for k in range(0, len(events), 100):
        await append(client, s, events[k : k + 100])
    # The runners read the first entries, then keep collecting for BATCH_MAX_WAIT_MS: a batch
    # in hand, delivered and not acknowledged.
    await _eventually(lambda: _has_pending(s, client), limit_s=10)
    in_hand = await _pending_event_ids(s, client)
    w.proc.send_signal(signal.SIGTERM)
    late = [_event(users[i % len(users)], i) for i in range(200)]  # read, or left for later
    for k in range(0, len(late), 50):
        await append(client, s, late[k : k + 50])
    events += late
    assert await w.exit_code(limit_s=30) == 0
    assert in_hand

    assert await _pending(s, client) == 0  # nothing left pending by the stopped consumers
    appended, acked = await _backlog(s, client)
    assert appended == len(events)
    stored = set(await _stored_ids(conn, users))
    assert in_hand <= stored  # the batch in hand was stored and acknowledged
    assert await _stored(conn, users) == (acked, acked)  # whatever was acked is stored, once
    log = w.log()
    started_groups = sorted(e["group"] for e in log if e["message"] == "consumer started")
    stopped_groups = sorted(e["group"] for e in log if e["message"] == "consumer stopped")
    assert started_groups.count(PROCESSOR_GROUP) == 2  # WORKER_CONCURRENCY runners
    assert stopped_groups == started_groups  # every runner, of every group, stopped
    assert "worker stopped" in w.messages()
    # No error from the consumer runtime (such as "batch not finished in time"); the worker's
    # other duties (maintenance, ...) are not what this test judges.
    runtime = ("pipeline.runner", "pipeline.worker", "pipeline.processor")
    assert not [e for e in log if e["level"] == "error" and e["logger"] in runtime]

    # What was not read yet waits in the streams for the next worker: none of it is lost.
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(s, stop))
    try:
        await _eventually(lambda: _drained(s, client), limit_s=20)
    finally:
        stop.set()
        await task
    assert await _stored(conn, users) == (len(events), len(events))


async def _has_pending(s: Settings, client: redis.Redis) -> bool:
    return await _pending(s, client) > 0


async def _pending_event_ids(s: Settings, client: redis.Redis) -> set[str]:
    """Event ids of every entry delivered and not yet acknowledged."""
    ids: set[str] = set()
    for p in range(s.stream_partitions):
        stream = events_stream(p)
        try:
            rows: Any = await client.xpending_range(
                stream, PROCESSOR_GROUP, min="-", max="+", count=10_000
            )
        except ResponseError:
            continue
        for r in rows:
            entry: Any = await client.xrange(stream, r["message_id"], r["message_id"])
            ids |= {k.decode() for k in entry[0][1]}
    return ids


# -- 3. replicas killed mid-batch -------------------------------------------------------------

CRASH_EVENTS = 20_000
CRASH_INVALID = 50
CHUNK = 200  # events per append call or per POST, like one producer request


def _crash_events(users: list[str]) -> tuple[list[StreamEvent], set[str], set[str]]:
    """The events in sending order, the valid ones' ids and the invalid ones' ids; the
    invalid ones (a snapshot whose `connections` is not a number) are spread over the run."""
    events: list[StreamEvent] = []
    valid: set[str] = set()
    invalid: set[str] = set()
    every = CRASH_EVENTS // CRASH_INVALID
    for i in range(CRASH_EVENTS):
        user = users[i % len(users)]
        if i % every == every // 2:
            e = make_event(user, "profile_snapshot", properties={"connections": "many"})
            invalid.add(e.event_id)
        else:
            e = _event(user, i)
            valid.add(e.event_id)
        events.append(e)
    return events, valid, invalid


def _as_json(e: StreamEvent) -> dict[str, Any]:
    """The event as a producer POSTs it (time left to the gateway, which stamps receipt)."""
    return {
        "event_id": e.event_id,
        "user_id": e.user_id,
        "type": e.type,
        "value": e.value,
        "properties": orjson.loads(e.properties),
    }


Send = Callable[[list[StreamEvent]], Awaitable[None]]


@asynccontextmanager
async def _producer(
    how: str, s: Settings, client: redis.Redis, workers: Workers, refused: set[str]
) -> AsyncIterator[Send]:
    """`append`: streams_helpers.append, the gateway's entry format without the gateway.
    `gateway`: POST /ingest/events to a real `analytics gateway` process, which refuses the
    invalid events itself (their ids go to `refused`); the workers see only valid ones."""
    if how == "append":

        async def send_appended(chunk: list[StreamEvent]) -> None:
            await append(client, s, chunk)

        yield send_appended
        return
    port = _free_port()
    gateway = workers.start("gateway", HTTP_PORT=str(port), JWT_SECRET=s.jwt_secret)
    await workers.started(gateway, ready="gateway listening")
    token = mint_token(s, subject="crash-test", role="producer", ttl_seconds=600)
    url = f"http://127.0.0.1:{port}/ingest/events"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:

        async def send_posted(chunk: list[StreamEvent]) -> None:
            async with http.post(
                url,
                data=orjson.dumps([_as_json(e) for e in chunk]),
                headers={"Content-Type": "application/json"},
            ) as r:
                body: Any = await r.json()
                assert r.status == 202, body
                for result in body["results"]:
                    if result["status"] == "rejected":
                        field = result["error"]["field"]
                        assert field == f"$[{result['index']}].properties.connections", body
                        refused.add(chunk[result["index"]].event_id)
                assert body["accepted"] + body["rejected"] == len(chunk), body

        yield send_posted


async def _kill_mid_batch(
    s: Settings, client: redis.Redis, workers: Workers, extra: dict[str, str], deadline: float
) -> tuple[int, int]:
    """SIGKILL a worker holding a batch (entries delivered to it, not acknowledged), start a
    replacement; returns (pid, entries the dead worker left pending)."""
    while True:
        assert time.monotonic() < deadline, "no worker was ever caught mid-batch"
        pending = await _pending_by_consumer(s, client)
        victim = next(
            (w for w in workers.alive if any(w.owns(c) and n > 0 for c, n in pending.items())),
            None,
        )
        if victim is not None:
            break
        await asyncio.sleep(0.01)
    victim.proc.kill()
    victim.proc.wait()
    pending = await _pending_by_consumer(s, client)
    left = sum(n for c, n in pending.items() if victim.owns(c))
    await workers.started(workers.start(**extra))
    return victim.pid, left


@pytest.mark.parametrize("how", ["append", "gateway"])
async def test_workers_killed_mid_batch_lose_and_repeat_nothing(
    env: tuple[Settings, redis.Redis, asyncpg.Connection], workers: Workers, how: str
) -> None:
    s, client, conn = env
    started = time.monotonic()
    extra = {"CLAIM_IDLE_MS": "1000", "BATCH_MAX_ROWS": "2000"}
    for _ in range(3):
        workers.start(**extra)
    for w in workers.all:
        await workers.started(w)
    users = _users(f"crash-{how}", 40)
    events, valid, invalid = _crash_events(users)

    refused: set[str] = set()
    async with _producer(how, s, client, workers, refused) as send:

        async def produce() -> None:
            for k in range(0, len(events), CHUNK):
                await send(events[k : k + CHUNK])
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(produce())
        kills: list[tuple[int, int]] = []
        try:
            # Until three kills left a batch behind (the victim may acknowledge between our
            # look at XPENDING and the SIGKILL; that kill still counts as a crash, not a hit).
            while sum(left > 0 for _, left in kills) < 3:
                assert len(kills) < 8, kills
                kills.append(await _kill_mid_batch(s, client, workers, extra, started + 60))
            await feeder
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
    remaining_s = 110 - (time.monotonic() - started)
    await _eventually(lambda: _drained(s, client), limit_s=max(remaining_s, 10))

    assert not feeder.cancelled()  # every event was sent, the kills happened while sending
    for w in workers.alive:
        w.proc.send_signal(signal.SIGTERM)
    killed = {pid for pid, _ in kills}
    for w in workers.all:
        assert await w.exit_code(limit_s=30) == (-signal.SIGKILL if w.pid in killed else 0)

    assert len(valid) == CRASH_EVENTS - CRASH_INVALID and len(invalid) == CRASH_INVALID
    assert await _stored(conn, users) == (len(valid), len(valid))
    assert set(await _stored_ids(conn, users)) == valid
    dlq = await read_stream(client, DLQ_STREAM)
    dead = [stream_event_decoder.decode(f[b"payload"]).event_id for _, f in dlq]
    # A crash between dead-lettering and acknowledging may repeat a DLQ entry (runner.py says
    # so); the set is what must match, and nothing else may be there. Through the gateway the
    # invalid events never reach a stream: it answered each with a 422 item.
    assert set(dead) == (invalid if how == "append" else set())
    assert refused == (set() if how == "append" else invalid)
    assert all(f[b"stage"] == b"validate" for _, f in dlq)
    assert time.monotonic() - started < 120
