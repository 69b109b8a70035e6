"""The `processor` group's handler: validate -> enrich -> store -> publish metric changes.

Everything before `write_batch` commits is pure or read-only; everything after it may be
repeated safely (a retry re-runs the batch: the writer skips rows already stored, the current
values are recomputed from the database, the metrics entry is published again), so the runner
can acknowledge only after this handler returns.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
import redis.asyncio as redis

from pipeline.runner import DeadLetter, Delivery
from pipeline.stages.enrich import queue_write_scores, read_scores
from pipeline.stages.rows import rows_for, to_datetime
from pipeline.stages.validate import ValidEvent, validate
from schemas.entries import metric_update, metrics_entry
from schemas.metrics import metrics_changed_by
from schemas.streams import METRICS_STREAM
from schemas.timefmt import iso_ms
from sinks.cache_generations import queue_invalidate
from sinks.queries.current_values import current_values
from sinks.timescale import write_batch

__all__ = ["Processor", "metric_updates", "touched"]

STAGE: Final = "store"


def metric_updates(
    events: list[ValidEvent], values: dict[str, dict[str, float | None]], committed_at: datetime
) -> list[dict[str, Any]]:
    """One update per (user, metric) the batch changed, carrying the new current value, as
    the entry carries it (schemas/entries.py)."""
    changed: dict[str, set[str]] = defaultdict(set)
    newest: dict[str, int] = {}
    for v in events:
        e = v.event
        changed[e.user_id] |= metrics_changed_by(e.type)
        newest[e.user_id] = max(newest.get(e.user_id, 0), e.time_us)
    committed = iso_ms(committed_at)
    updates = []
    for user, names in changed.items():
        current = values.get(user, {})
        as_of = iso_ms(to_datetime(newest[user]))
        for name in sorted(names):
            updates.append(metric_update(user, name, current.get(name), as_of, committed))
    return updates


def touched(events: list[ValidEvent]) -> dict[str, list[int]]:
    """Per user, the first and last event time (us) of the batch: what the rollups recompute."""
    spans: dict[str, list[int]] = {}
    for v in events:
        e = v.event
        span = spans.get(e.user_id)
        if span is None:
            spans[e.user_id] = [e.time_us, e.time_us]
        elif e.time_us < span[0]:
            span[0] = e.time_us
        elif e.time_us > span[1]:
            span[1] = e.time_us
    return spans


@dataclass
class Processor:
    redis: redis.Redis
    pool: asyncpg.Pool

    async def __call__(self, batch: list[Delivery]) -> list[DeadLetter]:
        valid, dead = validate(batch)
        if not valid:
            return dead
        users = sorted({v.event.user_id for v in valid})
        scores = await read_scores(self.redis, users)
        async with self.pool.acquire() as conn:
            await write_batch(conn, rows_for(valid, scores))
            committed_at: datetime = await conn.fetchval("SELECT clock_timestamp()")
            values = await current_values(conn, users, committed_at)
        version_us = int(committed_at.timestamp() * 1_000_000)
        influence = {
            u: score for u, v in values.items() if (score := v.get("influenceScore")) is not None
        }
        entry = metrics_entry(metric_updates(valid, values, committed_at), touched(valid))
        # One round trip; Redis runs a connection's commands in order, so the cache is
        # invalidated before the batch is announced: a dashboard refetching on its update must
        # miss the cache. Not a transaction: each command may be repeated on its own (see the
        # module docstring), and a failed one fails the batch, which is then retried whole.
        async with self.redis.pipeline(transaction=False) as pipe:
            queue_write_scores(pipe, influence, version_us)
            queue_invalidate(pipe, users)
            _ = pipe.xadd(METRICS_STREAM, entry)
            await pipe.execute()
        return dead
