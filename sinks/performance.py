"""The `performance_metrics` hypertable: one row per process every PERF_SAMPLE_INTERVAL, written
by the samplers (sinks/perf_sampler.py) and read per time bucket by
`GET /api/v1/system/performance` (gateway/api/system.py).

Prometheus keeps these figures for its own retention; this table keeps them as long as
RETENTION_DAYS (the maintenance task drops its old chunks with the other raw tables), so an
operator can still ask what last week's slow afternoon looked like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import asyncpg
import orjson

from sinks.db import Conn

__all__ = ["BUCKET_SQL", "ProcessKind", "Sample", "bucketed", "insert_samples"]

# 'all' is `analytics up`: the gateway and every worker group in one process, one sampler.
ProcessKind = Literal["gateway", "worker", "all"]


@dataclass(frozen=True, slots=True)
class Sample:
    """What one process did since its previous sample. None where a figure does not apply to
    the process (a gateway stores no batches) or could not be read (Redis down for the lag)."""

    time: datetime
    process_kind: ProcessKind
    process_name: str
    events_in_per_s: float
    events_out_per_s: float
    batch_size_avg: float | None
    copy_latency_p99_s: float | None
    group_lag: int | None
    ws_connections: int | None
    rss_bytes: int
    cpu_percent: float
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> tuple[Any, ...]:
        return (
            self.time,
            self.process_kind,
            self.process_name,
            self.events_in_per_s,
            self.events_out_per_s,
            self.batch_size_avg,
            self.copy_latency_p99_s,
            self.group_lag,
            self.ws_connections,
            self.rss_bytes,
            self.cpu_percent,
            orjson.dumps(self.extra).decode(),
        )


# ON CONFLICT: a write that timed out after its commit is retried with the same rows, and
# (process_name, time) is unique, so the retry adds nothing.
_INSERT: Final = """
INSERT INTO performance_metrics (time, process_kind, process_name, events_in_per_s,
    events_out_per_s, batch_size_avg, copy_latency_p99_s, group_lag, ws_connections, rss_bytes,
    cpu_percent, extra)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb)
ON CONFLICT DO NOTHING
"""


async def insert_samples(conn: Conn, samples: Sequence[Sample]) -> None:
    """Store `samples` in one transaction; at most a few dozen rows, so no COPY."""
    await conn.executemany(_INSERT, [s.record() for s in samples])


# Rates and CPU are means over the bucket's samples (the samples are evenly spaced, so the
# mean rate is the bucket's rate); latency, lag, connections and RSS are the bucket's worst
# moment, because a mean of p99s or of peaks hides exactly what an operator looks for.
BUCKET_SQL: Final = """
SELECT process_kind, process_name, time_bucket($1::interval, time) AS bucket,
       count(*) AS samples,
       avg(events_in_per_s) AS events_in_per_s,
       avg(events_out_per_s) AS events_out_per_s,
       avg(batch_size_avg) AS batch_size_avg,
       max(copy_latency_p99_s) AS copy_latency_p99_max,
       max(group_lag) AS group_lag_max,
       max(ws_connections) AS ws_connections_max,
       max(rss_bytes) AS rss_bytes_max,
       avg(cpu_percent) AS cpu_percent
FROM performance_metrics
WHERE time >= $2 AND time < $3 AND ($4::text IS NULL OR process_kind = $4)
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
LIMIT $5
"""


async def bucketed(
    conn: Conn,
    width: timedelta,
    start: datetime,
    end: datetime,
    kind: ProcessKind | None,
    limit: int,
) -> list[asyncpg.Record]:
    """BUCKET_SQL's rows for [start, end), at most `limit`, by process then bucket."""
    return list(await conn.fetch(BUCKET_SQL, width, start, end, kind, limit))
