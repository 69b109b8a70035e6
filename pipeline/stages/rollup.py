"""The `rollup` group (Apache edition only): keep the rollup tables equal to the raw data.

Reads `ia:metrics`, whose entries name, per user, the span of event times a stored batch
touched, and recomputes those buckets from the raw rows (sinks/rollups.py). With the full
edition the rollups are continuous aggregates and this group does not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import asyncpg
import orjson

from pipeline.runner import DeadLetter, Delivery
from pipeline.stages.store import to_datetime
from sinks.rollups import recompute

__all__ = ["ROLLUP_GROUP", "RollupStage"]

# The consumer group on ia:metrics that maintains rollup tables.
ROLLUP_GROUP: Final = "rollup"
STAGE: Final = "rollup"


@dataclass
class RollupStage:
    pool: asyncpg.Pool

    async def __call__(self, batch: list[Delivery]) -> list[DeadLetter]:
        spans: dict[str, tuple[int, int]] = {}
        dead: list[DeadLetter] = []
        for d in batch:
            fields = dict(d.fields)
            raw = fields.get(b"touched")
            if raw is None:
                continue  # an entry from an older writer: nothing to recompute
            try:
                touched = orjson.loads(raw)
                for user, (lo, hi) in touched.items():
                    old = spans.get(user)
                    spans[user] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
            except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as e:
                dead.append(DeadLetter(d, f"unreadable touched spans: {e}", STAGE))
        if spans:
            async with self.pool.acquire() as conn:
                await recompute(
                    conn, {u: (to_datetime(lo), to_datetime(hi)) for u, (lo, hi) in spans.items()}
                )
        return dead
