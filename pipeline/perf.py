"""The worker's performance sampler (sinks/perf_sampler.py), started by `run_worker`.

What a worker sample holds: events in = events handed to the `processor` group's batches
(dead-lettered ones included), events out = events newly stored (rows committed into
`real_time_events`, which gets one row per valid event; redelivered duplicates are not
counted), batch size = events per processor batch, COPY latency p99 over the interval, group
lag = entries not yet delivered to the groups this worker runs, RSS and CPU.

`analytics up` runs gateway and worker in one process: there the caller passes the gateway's
totals and the sample is of kind `all`, with the process's edges: events in at the gateway,
events out at the store, and the gateway's WebSocket connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import asyncpg
import redis.asyncio as redis

from pipeline.prom import BATCH_ROWS
from pipeline.stages.rollup import ROLLUP_GROUP
from schemas.settings import Settings
from schemas.streams import ALERTING_GROUP, METRICS_STREAM, PROCESSOR_GROUP, events_stream
from sinks.perf_sampler import Sampler, Totals, histogram_buckets, metric_value, read_lag
from sinks.timescale import COPY_SECONDS, ROWS_WRITTEN

__all__ = ["start_sampler", "worker_totals"]

# The processor runners' `stage` label (pipeline/worker.py).
_STAGE = "processor"


def worker_totals() -> Totals:
    """This process's worker figures as its Prometheus metrics hold them."""
    events = metric_value(BATCH_ROWS, "_sum", stage=_STAGE)
    return Totals(
        events_in=events,
        events_out=metric_value(ROWS_WRITTEN, "_total", table="real_time_events"),
        batches=metric_value(BATCH_ROWS, "_count", stage=_STAGE),
        batch_events=events,
        copy_buckets=histogram_buckets(COPY_SECONDS),
    )


def start_sampler(
    settings: Settings,
    client: redis.Redis,
    pool: asyncpg.Pool,
    groups: Sequence[str],
    stop: asyncio.Event,
    *,
    gateway_totals: Callable[[], Totals] | None = None,
) -> asyncio.Task[None]:
    """The sampler's task, until `stop`; kind `all` when `gateway_totals` is given."""
    pairs: list[tuple[str, str]] = []
    if PROCESSOR_GROUP in groups:
        pairs += [(events_stream(p), PROCESSOR_GROUP) for p in range(settings.stream_partitions)]
    if ROLLUP_GROUP in groups:
        pairs.append((METRICS_STREAM, ROLLUP_GROUP))
    if ALERTING_GROUP in groups:
        pairs.append((METRICS_STREAM, ALERTING_GROUP))

    async def lag() -> dict[str, int]:
        return await read_lag(client, pairs)

    async def get_pool() -> asyncpg.Pool:
        return pool

    def totals() -> Totals:
        worker = worker_totals()
        if gateway_totals is None:
            return worker
        gateway = gateway_totals()
        return Totals(
            events_in=gateway.events_in,
            events_out=worker.events_out,
            batches=worker.batches,
            batch_events=worker.batch_events,
            copy_buckets=worker.copy_buckets,
            ws_connections=gateway.ws_connections,
        )

    sampler = Sampler(
        kind="worker" if gateway_totals is None else "all",
        interval=settings.perf_sample_interval,
        totals=totals,
        pool=get_pool,
        lag=lag,
    )
    return asyncio.create_task(sampler.run(stop), name="perf-sampler")
