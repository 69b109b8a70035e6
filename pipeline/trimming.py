"""Trimming streams to what no consumer group still needs.

The event streams are trimmed to the lowest id a group still needs (`trim_acknowledged`, by
one runner of the processor group); ia:metrics is also the gateways' replay log for resuming
dashboards, so it keeps a retention window on top (`trim_metrics_stream`, by the worker).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis.asyncio as redis
from redis.exceptions import ResponseError

from pipeline.deliveries import id_key
from schemas.dead_letters import text
from schemas.streams import METRICS_STREAM

__all__ = ["safe_trim_floor", "trim_acknowledged", "trim_metrics_stream"]


async def safe_trim_floor(client: redis.Redis, stream: str) -> str | None:
    """Lowest id some group still needs: its oldest pending entry, else the entry after the
    last one it was given. None when the stream has no group (then nothing may be trimmed)."""
    try:
        groups = await client.xinfo_groups(stream)
    except ResponseError:
        return None
    if not groups:
        return None
    floors: list[str] = []
    for g in groups:
        name = text(g["name"])
        last = text(g["last-delivered-id"])
        summary = await client.xpending(stream, name)
        if summary["pending"]:
            floors.append(text(summary["min"]))
        else:
            ms, seq = id_key(last)
            floors.append(f"{ms}-{seq + 1}")
    return min(floors, key=id_key)


async def trim_acknowledged(client: redis.Redis, streams: Iterable[str]) -> None:
    """Remove entries every group has acknowledged; never one that is still pending."""
    for stream in streams:
        floor = await safe_trim_floor(client, stream)
        if floor is not None:
            await client.xtrim(stream, minid=floor, approximate=False)


async def trim_metrics_stream(client: redis.Redis, retention_s: float) -> int:
    """Drop ia:metrics entries older than the replay window that every group acknowledged."""
    cutoff = f"{int((time.time() - retention_s) * 1000)}-0"
    floor = await safe_trim_floor(client, METRICS_STREAM)
    if floor is not None and id_key(floor) < id_key(cutoff):
        cutoff = floor
    return int(await client.xtrim(METRICS_STREAM, minid=cutoff, approximate=False))
