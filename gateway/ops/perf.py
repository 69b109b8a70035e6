"""The gateway's performance sampler (sinks/perf_sampler.py), started in a cleanup_ctx.

What a gateway sample holds: events in = events received by the ingest endpoints (accepted,
duplicate and rejected), events out = events accepted into the partition streams, group lag =
entries of the partition streams not yet delivered to the `processor` group (how far the
workers trail this gateway's producers), WebSocket connections of this process, RSS and CPU.
A gateway stores no batches, so batch size and COPY latency stay null.

Under `analytics up` the worker's sampler reports for the whole process (kind `all`), and the
composition root sets `PERF_IN_WORKER` so this one does not start.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from gateway.http.prom import INGEST_EVENTS
from gateway.keys import DB_POOL, REDIS, SETTINGS
from gateway.ws.prom import CONNECTIONS
from schemas.settings import Settings
from schemas.streams import PROCESSOR_GROUP, events_stream
from sinks.perf_sampler import WRITE_TIMEOUT_S, Sampler, Totals, metric_value, read_lag

__all__ = ["PERF_IN_WORKER", "PERF_SAMPLER", "gateway_totals", "perf_ctx"]

PERF_SAMPLER = web.AppKey("perf_sampler", Sampler)
# Set (True) by `analytics up`: the in-process worker samples for the gateway too.
PERF_IN_WORKER = web.AppKey("perf_in_worker", bool)
# The loop leaves at its next tick once stopped; a write in flight gets its own timeout first.
_STOP_GRACE_S: Final = WRITE_TIMEOUT_S + 1.0


def gateway_totals(settings: Settings) -> Totals:
    """This process's gateway figures as its Prometheus metrics hold them."""
    return Totals(
        events_in=metric_value(INGEST_EVENTS, "_total"),
        events_out=metric_value(INGEST_EVENTS, "_total", outcome="accepted"),
        ws_connections=int(metric_value(CONNECTIONS)) if settings.ws_enabled else None,
    )


async def perf_ctx(app: web.Application) -> AsyncIterator[None]:
    """Sample from startup until cleanup; after the Redis and database contexts, so both are
    there for every sample and still open while the loop stops."""
    if app.get(PERF_IN_WORKER, False):
        yield
        return
    settings, redis = app[SETTINGS], app[REDIS]
    pairs = [(events_stream(p), PROCESSOR_GROUP) for p in range(settings.stream_partitions)]

    async def lag() -> dict[str, int]:
        return await read_lag(redis, pairs)

    sampler = Sampler(
        kind="gateway",
        interval=settings.perf_sample_interval,
        totals=lambda: gateway_totals(settings),
        pool=app[DB_POOL],
        lag=lag,
    )
    app[PERF_SAMPLER] = sampler
    stop = asyncio.Event()
    task = asyncio.create_task(sampler.run(stop), name="perf-sampler")
    try:
        yield
    finally:
        stop.set()
        done, _ = await asyncio.wait([task], timeout=_STOP_GRACE_S)
        if not done:
            task.cancel()
            await asyncio.wait([task])
