"""Worker processes: the consumer groups' runners, their connections, their metrics port."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Final

import asyncpg
import redis.asyncio as redis
from prometheus_client import start_http_server

from pipeline.maintenance import run_scheduled
from pipeline.perf import start_sampler
from pipeline.processor import Processor
from pipeline.runner import Runner
from pipeline.stages.alerting import AlertingStage
from pipeline.stages.rollup import ROLLUP_GROUP, RollupStage
from pipeline.trimming import trim_metrics_stream
from schemas.settings import Settings
from schemas.streams import (
    ALERTING_GROUP,
    METRICS_STREAM,
    PROCESSOR_GROUP,
    backlog_key,
    events_stream,
)
from sinks.db import create_pool
from sinks.perf_sampler import Totals
from sinks.rollups import edition

__all__ = ["ALL_GROUPS", "open_redis", "run_worker"]

log = logging.getLogger(__name__)

# Long enough to finish and commit the batch in hand; shorter than compose's grace period.
FINISH_BATCH_SECONDS = 20.0


# How often the replay window of ia:metrics is enforced; trimming is cheap and idempotent.
TRIM_METRICS_EVERY_S: Final = 10.0


async def _trim_metrics_forever(
    client: redis.Redis, retention_s: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await trim_metrics_stream(client, retention_s)
        except Exception:
            # Trimming late only costs memory; the next round catches up.
            log.warning("ia:metrics trim failed", exc_info=True)
        try:
            async with asyncio.timeout(TRIM_METRICS_EVERY_S):
                await stop.wait()
        except TimeoutError:
            pass


def open_redis(settings: Settings, *, max_connections: int = 32) -> redis.Redis:
    pool = redis.BlockingConnectionPool(
        host=settings.redis_host,
        port=settings.redis_port,
        db=settings.redis_db,
        password=settings.redis_password or None,
        max_connections=max_connections,
        socket_timeout=10,
        socket_connect_timeout=5,
        timeout=10,
    )
    return redis.Redis.from_pool(pool)  # the client owns the pool: aclose() disconnects it


ALL_GROUPS: Final = (PROCESSOR_GROUP, ROLLUP_GROUP, ALERTING_GROUP)


async def run_worker(
    settings: Settings,
    stop: asyncio.Event,
    *,
    metrics_port: int | None = None,
    groups: Sequence[str] = ALL_GROUPS,
    gateway_totals: Callable[[], Totals] | None = None,
) -> None:
    """Run the groups' runners (WORKER_CONCURRENCY for `processor`) until `stop` is set, then
    let each finish its batch and return. `gateway_totals`: the figures of a gateway in this
    same process (`analytics up`), whose performance samples then cover both (kind `all`)."""
    if metrics_port is not None:
        start_http_server(metrics_port, addr="0.0.0.0")  # noqa: S104 - scraped from outside
    async with AsyncExitStack() as stack:
        client = open_redis(settings)
        stack.push_async_callback(client.aclose)
        pool = await create_pool(settings)
        stack.push_async_callback(pool.close)
        runners = await _build_runners(settings, client, pool, groups)
        tasks = [asyncio.create_task(r.run(), name=f"runner-{r.consumer}") for r in runners]
        duties = _start_duties(settings, client, pool, groups, stop, gateway_totals)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        await _finish_batches(runners, tasks)
        # The sampler among the duties: `stop` usually ended its loop already; a failed
        # runner did not.
        for task in (stopper, *duties):
            task.cancel()
        await asyncio.gather(stopper, *duties, return_exceptions=True)
        _raise_first_failure(tasks)
        log.info(
            "worker stopped",
            extra={
                "batches": sum(r.batches for r in runners),
                "entries": sum(r.entries for r in runners),
            },
        )


async def _build_runners(
    settings: Settings, client: redis.Redis, pool: asyncpg.Pool, groups: Sequence[str]
) -> list[Runner]:
    runners: list[Runner] = []
    if PROCESSOR_GROUP in groups:
        runners += _processor_runners(settings, client, pool)
    if ROLLUP_GROUP in groups:
        runners.append(await _rollup_runner(settings, client, pool))
    if ALERTING_GROUP in groups:
        runners.append(_alerting_runner(settings, client, pool))
    return runners


def _processor_runners(settings: Settings, client: redis.Redis, pool: asyncpg.Pool) -> list[Runner]:
    """WORKER_CONCURRENCY runners sharing one Processor; only the first trims the streams."""
    streams = [events_stream(p) for p in range(settings.stream_partitions)]
    processor = Processor(client, pool)
    return [
        Runner(
            redis=client,
            settings=settings,
            group=PROCESSOR_GROUP,
            streams=streams,
            handler=processor,
            stage="processor",
            backlog_keys={s: backlog_key(p) for p, s in enumerate(streams)},
            trim=i == 0,
        )
        for i in range(settings.worker_concurrency)
    ]


async def _rollup_runner(settings: Settings, client: redis.Redis, pool: asyncpg.Pool) -> Runner:
    async with pool.acquire() as conn:
        full_edition = await edition(conn) == "timescale"
    # ia:metrics is also the gateways' replay log for resuming dashboards, so this
    # group never trims it.
    return Runner(
        redis=client,
        settings=settings,
        group=ROLLUP_GROUP,
        streams=[METRICS_STREAM],
        handler=RollupStage(pool, client, full=full_edition),
        stage="rollup",
        trim=False,
    )


def _alerting_runner(settings: Settings, client: redis.Redis, pool: asyncpg.Pool) -> Runner:
    # Like the rollup group, it never trims ia:metrics (the gateways' replay log); the
    # worker's trim waits for its acknowledgements.
    return Runner(
        redis=client,
        settings=settings,
        group=ALERTING_GROUP,
        streams=[METRICS_STREAM],
        handler=AlertingStage(pool, client),
        stage="alerting",
        trim=False,
    )


def _start_duties(
    settings: Settings,
    client: redis.Redis,
    pool: asyncpg.Pool,
    groups: Sequence[str],
    stop: asyncio.Event,
    gateway_totals: Callable[[], Totals] | None,
) -> list[asyncio.Task[None]]:
    """The worker's tasks besides its runners: maintenance, the ia:metrics trim, the sampler."""
    maintenance = asyncio.create_task(run_scheduled(settings, client, stop))
    trimmer = asyncio.create_task(
        _trim_metrics_forever(client, settings.metrics_stream_retention, stop)
    )
    sampler = start_sampler(settings, client, pool, groups, stop, gateway_totals=gateway_totals)
    return [maintenance, trimmer, sampler]


async def _finish_batches(runners: list[Runner], tasks: list[asyncio.Task[None]]) -> None:
    """Stop the runners and give them FINISH_BATCH_SECONDS to finish the batch in hand."""
    for r in runners:
        r.stop()
    try:
        async with asyncio.timeout(FINISH_BATCH_SECONDS):
            # Failures are kept in their tasks (`_raise_first_failure` reports the first):
            # raising here would leave the other runners' batches and the duties running
            # while the exit stack closes Redis and the pool under them.
            await asyncio.gather(*tasks, return_exceptions=True)
    except TimeoutError:
        log.error("batch not finished in time; its entries stay pending for another replica")
        for t in tasks:
            t.cancel()


def _raise_first_failure(tasks: list[asyncio.Task[None]]) -> None:
    failures = [
        e for t in tasks if t.done() and not t.cancelled() and (e := t.exception()) is not None
    ]
    if failures:
        raise failures[0]
