"""The consumer-group runtime (`pipeline.runner.Runner`) on a real Redis, with handlers written
here: acknowledgement after the handler, reclaiming a dead consumer's entries, MAX_DELIVERIES,
poison isolation, transient retries and a graceful stop.

Each test runs on a stream, backlog hash and group of its own, in a Redis database other test
modules do not flush, and reads only its own `ia:dlq` entries (by group): so these tests hold
even while another run of the suite shares the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from pipeline.runner import DeadLetter, Delivery, Handler, Runner, Transient
from pipeline.worker import open_redis
from schemas.events import StreamEvent, stream_event_encoder
from schemas.settings import Settings
from schemas.streams import DLQ_STREAM
from tests.conftest import settings_for
from tests.streams_helpers import make_event, read_stream

REDIS_DB = 13
STAGE = "test-stage"


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_db": REDIS_DB, "batch_max_wait_ms": 50, "claim_idle_ms": 200}
    values.update(overrides)
    # settings_for(redis_db=...) collides with the redis_db it derives from TEST_REDIS_URL.
    return dataclasses.replace(settings_for(), **values)


@dataclass
class Lane:
    """One test's stream, backlog hash and consumer group."""

    client: redis.Redis
    stream: str
    backlog: str
    group: str

    async def append(self, events: list[StreamEvent]) -> str:
        """One entry carrying `events`, fields event_id -> msgpack event, as the gateway
        appends (tests/streams_helpers.append, on this test's own stream)."""
        fields: dict[Any, Any] = {e.event_id: stream_event_encoder.encode(e) for e in events}
        entry_id: Any = await self.client.xadd(self.stream, fields)
        await self.client.hincrby(self.backlog, "appended", len(events))
        return str(entry_id.decode())

    async def append_entries(self, entries: int, events_per_entry: int) -> list[str]:
        ids = []
        for _ in range(entries):
            ids.append(
                await self.append(
                    [make_event("runner-user", "profile_view") for _ in range(events_per_entry)]
                )
            )
        return ids

    async def pending(self) -> int:
        summary: Any = await self.client.xpending(self.stream, self.group)
        return int(summary["pending"])

    async def acked(self) -> int:
        return int(await self.client.hget(self.backlog, "acked") or 0)

    async def settled(self, events: int) -> bool:
        """At least `events` acknowledged and nothing pending (the asserts check "exactly")."""
        return await self.acked() >= events and await self.pending() == 0

    async def dead_letters(self) -> list[dict[bytes, bytes]]:
        entries = await read_stream(self.client, DLQ_STREAM)
        return [f for _, f in entries if f[b"group"] == self.group.encode()]

    def runner(self, s: Settings, handler: Handler, consumer: str = "live") -> Runner:
        return Runner(
            redis=self.client,
            settings=s,
            group=self.group,
            streams=[self.stream],
            handler=handler,
            stage=STAGE,
            backlog_keys={self.stream: self.backlog},
            consumer=consumer,
        )


@pytest.fixture
async def lane() -> AsyncIterator[Lane]:
    """The group exists before the runner starts, so a test can poll it at once; its name is
    unique, so its Prometheus samples start from nothing."""
    client = open_redis(_settings())
    tag = uuid.uuid4().hex[:8]
    # One hash tag, as the real partition keys have, so the ack script's keys share a slot.
    lane = Lane(client, f"t:{{{tag}}}:events", f"t:{{{tag}}}:backlog", f"g-{tag}")
    await client.xgroup_create(lane.stream, lane.group, id="0", mkstream=True)
    try:
        yield lane
    finally:
        mine: Any = await client.xrange(DLQ_STREAM)
        ids = [i for i, f in mine if f.get(b"group") == lane.group.encode()]
        if ids:
            await client.xdel(DLQ_STREAM, *ids)
        await client.delete(lane.stream, lane.backlog)
        await client.aclose()


@asynccontextmanager
async def _running(runner: Runner) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        runner.stop()
        done, _ = await asyncio.wait([task], timeout=10)
        if not done:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        else:
            task.result()  # surface a runner that died


async def _eventually(check: Callable[[], Awaitable[bool]], limit_s: float = 10.0) -> None:
    async with asyncio.timeout(limit_s):
        while not await check():
            await asyncio.sleep(0.02)


class Recorder:
    """A handler that records every batch it completed."""

    def __init__(self) -> None:
        self.batches: list[list[Delivery]] = []

    async def __call__(self, batch: list[Delivery]) -> list[DeadLetter]:
        self.batches.append(batch)
        return []

    @property
    def seen(self) -> list[str]:
        return [d.entry_id for b in self.batches for d in b]


async def test_entries_are_acknowledged_only_after_the_handler_returns(lane: Lane) -> None:
    s = _settings()
    ids = await lane.append_entries(entries=5, events_per_entry=2)
    entered = asyncio.Event()
    release = asyncio.Event()
    done = Recorder()

    async def handler(batch: list[Delivery]) -> list[DeadLetter]:
        entered.set()
        await release.wait()
        return await done(batch)

    runner = lane.runner(s, handler)
    try:
        async with _running(runner):
            async with asyncio.timeout(10):
                await entered.wait()
            await asyncio.sleep(0.3)  # time enough for a premature ack to show
            assert await lane.pending() == 5
            assert await lane.acked() == 0
            release.set()
            await _eventually(lambda: lane.settled(10))
            assert await lane.acked() == 10
    finally:
        release.set()
    assert sorted(done.seen) == sorted(ids)


async def test_entries_of_a_dead_consumer_are_reclaimed_processed_and_acknowledged(
    lane: Lane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.runner")
    s = _settings(claim_idle_ms=200)
    ids = await lane.append_entries(entries=3, events_per_entry=2)
    taken: Any = await lane.client.xreadgroup(lane.group, "dead", {lane.stream: ">"}, count=10)
    assert [e[0].decode() for e in taken[0][1]] == ids
    await asyncio.sleep(0.3)  # idle longer than CLAIM_IDLE_MS: "dead" is presumed dead
    done = Recorder()
    runner = lane.runner(s, done)
    async with _running(runner):
        await _eventually(lambda: lane.settled(6))
    assert sorted(done.seen) == sorted(ids)  # exactly those entries, each once
    assert all(d.deliveries == 2 for b in done.batches for d in b)
    assert await lane.acked() == 6
    assert REGISTRY.get_sample_value("ia_reclaimed_entries_total", {"group": lane.group}) == 3
    reclaimed = [r for r in caplog.records if r.getMessage() == "reclaimed idle entries"]
    assert [getattr(r, "entries", None) for r in reclaimed] == [3]
    consumers: Any = await lane.client.xinfo_consumers(lane.stream, lane.group)
    assert {c["name"].decode(): c["pending"] for c in consumers}.get("dead") == 0


async def test_an_entry_delivered_more_than_max_deliveries_goes_to_the_dlq_unhandled(
    lane: Lane,
) -> None:
    s = _settings(max_deliveries=3, claim_idle_ms=200)
    crasher = make_event("runner-user", "profile_view")
    x = await lane.append([crasher])
    [z] = await lane.append_entries(entries=1, events_per_entry=1)
    [y] = await lane.append_entries(entries=1, events_per_entry=1)
    # Every entry delivered once, to c1.
    await lane.client.xreadgroup(lane.group, "c1", {lane.stream: ">"}, count=10)
    # Replicas that crashed on x (twice) and on z (once) after taking them over.
    await lane.client.xclaim(lane.stream, lane.group, "c2", min_idle_time=0, message_ids=[x, z])
    await lane.client.xclaim(lane.stream, lane.group, "c3", min_idle_time=0, message_ids=[x])
    await asyncio.sleep(0.3)
    # The runner's XAUTOCLAIM is delivery 4 for x (over the limit), 3 for z, 2 for y.
    done = Recorder()
    runner = lane.runner(s, done)
    async with _running(runner):
        await _eventually(lambda: lane.settled(3))
    assert sorted(done.seen) == sorted([y, z])
    assert {d.entry_id: d.deliveries for b in done.batches for d in b} == {z: 3, y: 2}
    dlq = await lane.dead_letters()
    assert len(dlq) == 1
    fields = dlq[0]
    assert fields[b"entry_id"].decode() == x
    assert b"MAX_DELIVERIES" in fields[b"reason"]
    assert fields[b"deliveries"] == b"4"
    assert fields[b"stage"] == STAGE.encode()
    assert fields[b"group"] == lane.group.encode()
    assert fields[b"stream"] == lane.stream.encode()
    assert fields[f"f0:{crasher.event_id}".encode()] == stream_event_encoder.encode(crasher)
    assert await lane.acked() == 3  # the dead-lettered entry is acknowledged too


async def test_a_poison_entry_is_isolated_and_dead_lettered_the_rest_is_handled(lane: Lane) -> None:
    s = _settings(batch_max_wait_ms=200)
    ids = await lane.append_entries(entries=7, events_per_entry=2)
    poison = ids[4]
    original: list[tuple[bytes, bytes]] = []
    handled: list[Delivery] = []
    calls = 0

    async def handler(batch: list[Delivery]) -> list[DeadLetter]:
        nonlocal calls
        calls += 1
        for d in batch:
            if d.entry_id == poison:
                original[:] = d.fields
                raise ValueError(f"cannot handle {poison}")
        handled.extend(batch)
        return []

    runner = lane.runner(s, handler)
    async with _running(runner):
        await _eventually(lambda: lane.settled(14))
    assert calls > 2  # it was bisected, not given up on as a whole
    assert sorted(d.entry_id for d in handled) == sorted(i for i in ids if i != poison)
    dlq = await lane.dead_letters()
    assert len(dlq) == 1
    fields = dlq[0]
    assert fields[b"entry_id"].decode() == poison
    assert fields[b"reason"].decode() == f"ValueError: cannot handle {poison}"
    assert fields[b"stage"] == STAGE.encode()
    assert fields[b"deliveries"] == b"1"
    assert len(original) == 2
    assert {k: v for k, v in fields.items() if re.match(rb"f\d+:", k)} == {
        f"f{i}:{k.decode()}".encode(): v for i, (k, v) in enumerate(original)
    }
    assert await lane.acked() == 14


@pytest.mark.parametrize(
    "error",
    [
        lambda: Transient("database unavailable", retry_after=0.05),
        lambda: ConnectionError("connection refused"),
    ],
    ids=["Transient", "ConnectionError"],
)
async def test_transient_failures_are_retried_with_the_entries_kept_pending(
    lane: Lane, error: Callable[[], Exception]
) -> None:
    s = _settings(claim_idle_ms=300)
    ids = await lane.append_entries(entries=4, events_per_entry=3)
    handled: list[list[Delivery]] = []
    # Per attempt: entries pending, events acknowledged, entries a rival replica could steal.
    seen: list[tuple[int, int, list[Any]]] = []

    async def handler(batch: list[Delivery]) -> list[DeadLetter]:
        # What a rival replica would take over (with JUSTID the reply is the list of ids).
        stolen: Any = await lane.client.xautoclaim(
            lane.stream,
            lane.group,
            "rival",
            min_idle_time=s.claim_idle_ms,
            start_id="0-0",
            justid=True,
        )
        seen.append((await lane.pending(), await lane.acked(), stolen))
        if len(seen) <= 3:
            raise error()
        handled.append(batch)
        return []

    runner = lane.runner(s, handler)
    async with _running(runner):
        await _eventually(lambda: lane.settled(12))
    # Backoff 0.1 + 0.2 + 0.4 s: longer than CLAIM_IDLE_MS, yet no rival could take them.
    assert seen == [(4, 0, [])] * 4
    assert len(handled) == 1
    assert sorted(d.entry_id for d in handled[0]) == sorted(ids)
    assert await lane.dead_letters() == []
    assert await lane.acked() == 12


async def test_stop_finishes_and_acknowledges_the_batch_in_hand_then_returns(
    lane: Lane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.runner")
    s = _settings()
    ids = await lane.append_entries(entries=3, events_per_entry=2)
    entered = asyncio.Event()
    release = asyncio.Event()
    done = Recorder()

    async def handler(batch: list[Delivery]) -> list[DeadLetter]:
        entered.set()
        await release.wait()
        return await done(batch)

    runner = lane.runner(s, handler)
    task = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(10):
            await entered.wait()
        runner.stop()
        late = await lane.append_entries(entries=1, events_per_entry=1)
        await asyncio.sleep(0.3)
        assert not task.done()  # waits for the batch in hand
        assert await lane.pending() == 3
        release.set()
        async with asyncio.timeout(5):
            await task
    finally:
        release.set()
        runner.stop()
        if not task.done():
            task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    assert sorted(done.seen) == sorted(ids)
    assert await lane.pending() == 0
    assert await lane.acked() == 6
    # Nothing was read after stop(): the late entry is still undelivered.
    groups: Any = await lane.client.xinfo_groups(lane.stream)
    assert groups[0]["last-delivered-id"].decode() == ids[-1] != late[0]
    assert any(r.getMessage() == "consumer stopped" for r in caplog.records)
    consumers: Any = await lane.client.xinfo_consumers(lane.stream, lane.group)
    assert "live" not in {c["name"].decode() for c in consumers}  # it left the group
