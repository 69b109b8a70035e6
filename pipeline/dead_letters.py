"""Writing dead letters to `ia:dlq`; the letter's format is `schemas.dead_letters`."""

from __future__ import annotations

import logging
import time

import redis.asyncio as redis

from pipeline import prom
from pipeline.deliveries import DeadLetter
from schemas.dead_letters import letter_fields
from schemas.streams import DLQ_STREAM

__all__ = ["write_dead_letters"]

# The runtime's log lines keep the logger they had before it was split into modules: log
# queries and the worker tests select on `logger == "pipeline.runner"`.
log = logging.getLogger("pipeline.runner")


async def write_dead_letters(
    client: redis.Redis, group: str, stage: str, dead: list[DeadLetter]
) -> None:
    """Append one letter per item, counted under the runner's `stage`. Call before
    acknowledging: a crash in between re-delivers, so a DLQ entry may repeat."""
    if not dead:
        return
    async with client.pipeline(transaction=False) as pipe:
        for item in dead:
            d = item.delivery
            entry = letter_fields(
                stream=d.stream,
                entry_id=d.entry_id,
                group=group,
                stage=item.stage,
                reason=item.reason,
                deliveries=d.deliveries,
                failed_at_ms=int(time.time() * 1000),
                payload=item.payload,
                entry=d.fields,
            )
            pipe.xadd(DLQ_STREAM, entry)  # type: ignore[unused-awaitable]
        await pipe.execute()
    prom.DEAD_LETTERS.labels(stage).inc(len(dead))
    log.warning("dead-lettered", extra={"stage": stage, "count": len(dead)})
