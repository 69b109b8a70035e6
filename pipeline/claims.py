"""Ownership of pending entries: taking over what a dead replica left (XAUTOCLAIM) and keeping
what this consumer works on (XCLAIM), so no other replica takes it over in the meantime.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import ResponseError

from pipeline import prom
from pipeline.deliveries import READ_COUNT, TRANSIENT_ERRORS, Delivery, id_key, parse_reply
from schemas.dead_letters import text

__all__ = ["Claims"]

# The runtime's log lines keep the logger they had before it was split into modules: log
# queries and the worker tests select on `logger == "pipeline.runner"`.
log = logging.getLogger("pipeline.runner")


@dataclass
class Claims:
    """The pending entries of `consumer` in `group` on `streams`; `idle_ms` is CLAIM_IDLE_MS."""

    redis: redis.Redis
    group: str
    consumer: str
    streams: Sequence[str]
    idle_ms: int

    def __post_init__(self) -> None:
        self._cursor = dict.fromkeys(self.streams, "0-0")

    async def reclaim(self) -> list[Delivery]:
        """Take over entries idle longer than CLAIM_IDLE_MS, i.e. left by a dead replica."""
        claimed: list[Delivery] = []
        for stream in self.streams:
            cursor, entries, *_ = await self.redis.xautoclaim(
                stream,
                self.group,
                self.consumer,
                min_idle_time=self.idle_ms,
                start_id=self._cursor[stream],
                count=READ_COUNT,
            )
            self._cursor[stream] = text(cursor)
            got = parse_reply([[stream, entries]], deliveries=0)
            if not got:
                continue
            counts = await self._delivery_counts(stream, got)
            claimed.extend(
                Delivery(d.stream, d.entry_id, d.fields, counts.get(d.entry_id, 1)) for d in got
            )
        if claimed:
            prom.RECLAIMED.labels(self.group).inc(len(claimed))
            log.info("reclaimed idle entries", extra={"group": self.group, "entries": len(claimed)})
        return claimed

    async def _delivery_counts(self, stream: str, got: list[Delivery]) -> dict[str, int]:
        ids = sorted((d.entry_id for d in got), key=id_key)
        rows = await self.redis.xpending_range(
            stream,
            self.group,
            min=ids[0],
            max=ids[-1],
            count=len(ids) * 4 + 10,
            consumername=self.consumer,
        )
        return {text(r["message_id"]): int(r["times_delivered"]) for r in rows}  # type: ignore[arg-type]

    async def keep(self, batch: list[Delivery]) -> None:
        """Reset the entries' idle time while we work on them, so XAUTOCLAIM leaves them be.
        Runs until cancelled, or until the stream or group is gone."""
        period = self.idle_ms / 3000
        by_stream: dict[str, list[int | bytes | str | memoryview[int]]] = {}
        for d in batch:
            by_stream.setdefault(d.stream, []).append(d.entry_id)
        while True:
            await asyncio.sleep(period)
            try:
                for stream, ids in by_stream.items():
                    await self.redis.xclaim(
                        stream,
                        self.group,
                        self.consumer,
                        min_idle_time=0,
                        message_ids=ids,
                        justid=True,
                    )
            except TRANSIENT_ERRORS:
                log.warning("could not refresh claimed entries", extra={"group": self.group})
            except ResponseError:
                # The stream or group was deleted under us (NOGROUP): nothing is left to keep
                # claimed, and the batch's acknowledgement meets the same recovery path.
                log.warning("claimed entries are gone", extra={"group": self.group}, exc_info=True)
                return
