"""The `rollup` group: keep the rollups equal to the raw data, in both editions.

Reads `ia:metrics`. The processor's entries name, per user, the span of event times a stored
batch touched (`touched`), and those buckets are recomputed from the raw rows (Apache edition)
or refreshed in the continuous aggregates (full edition: a late event older than a refresh
policy's window would otherwise never reach its buckets); see sinks/rollups.py. Entries
without `touched` (the maintenance task's derived values, sinks/aggregations.py, or an older
writer's) changed no raw rows: nothing to do.

After a recompute the users' cached API answers are invalidated: the processor invalidated
them when it stored the batch, but an answer computed between that and this recompute read the
old rollup buckets (a late event's bucket is read from the rollup, see gateway/api/metrics.py)
and would otherwise be served until API_CACHE_TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import asyncpg
import redis.asyncio as redis

from pipeline.runner import DeadLetter, Delivery
from pipeline.stages.rows import to_datetime
from schemas.entries import UnreadableEntry, read_touched
from sinks.cache_generations import invalidate
from sinks.rollups import edition, level

__all__ = ["ROLLUP_GROUP", "RollupStage"]

# The consumer group on ia:metrics that maintains rollup tables.
ROLLUP_GROUP: Final = "rollup"
STAGE: Final = "rollup"


@dataclass
class RollupStage:
    pool: asyncpg.Pool
    redis: redis.Redis
    # The edition of the database; read on the first batch unless given.
    full: bool | None = None

    async def __call__(self, batch: list[Delivery]) -> list[DeadLetter]:
        spans: dict[str, tuple[int, int]] = {}
        dead: list[DeadLetter] = []
        for d in batch:
            try:
                touched = read_touched(dict(d.fields))
            except UnreadableEntry as e:
                dead.append(DeadLetter(d, f"unreadable touched spans: {e}", STAGE))
                continue
            if touched is None:
                continue  # derived values or an older writer's entry: no raw rows changed
            for user, (lo, hi) in touched.items():
                old = spans.get(user)
                spans[user] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        if spans:
            async with self.pool.acquire() as conn:
                if self.full is None:
                    self.full = await edition(conn) == "timescale"
                await level(
                    conn,
                    {u: (to_datetime(lo), to_datetime(hi)) for u, (lo, hi) in spans.items()},
                    full=self.full,
                )
            # After the commit; a Redis error fails the batch, which is redelivered and
            # recomputed again (idempotent) rather than leave stale answers cached.
            await invalidate(self.redis, sorted(spans))
        return dead
