"""Append events to the partition streams the way the gateway does, for worker tests."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import redis.asyncio as redis

from schemas.events import StreamEvent, stream_event_encoder
from schemas.settings import Settings
from schemas.streams import backlog_key, events_stream, partition_of


def make_event(
    user_id: str,
    type_: str,
    *,
    value: float = 1,
    time_us: int | None = None,
    event_id: str | None = None,
    properties: dict[str, Any] | None = None,
) -> StreamEvent:
    now = int(time.time() * 1_000_000)
    return StreamEvent(
        event_id=event_id or uuid.uuid4().hex,
        user_id=user_id,
        type=type_,
        time_us=time_us if time_us is not None else now,
        value=value,
        properties=orjson.dumps(properties or {}),
        received_us=now,
    )


async def append(client: redis.Redis, settings: Settings, events: list[StreamEvent]) -> list[str]:
    """One entry per partition, fields event_id -> msgpack event; returns the entry ids."""
    by_partition: dict[int, list[StreamEvent]] = {}
    for e in events:
        by_partition.setdefault(partition_of(e.user_id, settings.stream_partitions), []).append(e)
    ids = []
    for p, group in by_partition.items():
        fields: dict[Any, Any] = {e.event_id: stream_event_encoder.encode(e) for e in group}
        entry_id: Any = await client.xadd(events_stream(p), fields)
        ids.append(entry_id.decode())
        await client.hincrby(backlog_key(p), "appended", len(group))
    return ids


async def read_stream(client: redis.Redis, key: str) -> list[tuple[str, dict[bytes, bytes]]]:
    """Every entry of `key`, typed for tests (redis-py types replies loosely)."""
    raw: Any = await client.xrange(key)
    return [(entry_id.decode(), dict(fields)) for entry_id, fields in raw]


async def unprocessed(client: redis.Redis, settings: Settings) -> int:
    """Events appended to the partition streams and not yet acknowledged by the processor."""
    total = 0
    for p in range(settings.stream_partitions):
        counters: Any = await client.hgetall(backlog_key(p))
        total += int(counters.get(b"appended", 0)) - int(counters.get(b"acked", 0))
    return total
