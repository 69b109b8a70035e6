"""Prometheus metrics of the gateway, and `GET /metrics`.

`/metrics` serves prometheus_client's default registry: this module's metrics, the worker's
(`pipeline/prom.py`, `sinks/timescale.py`) when a worker runs in the same process
(`analytics up`), and the client's process and Python collectors (RSS, CPU, open files, GC).
Stream, group and pool figures live in Redis and asyncpg, not in this process, so they are
read when scraped, under a timeout: a scrape during a Redis outage still answers with
everything else (and `ia_scrape_errors_total` counts the failure) instead of timing out.

Names follow Prometheus conventions: base units, `_total` for counters, `_seconds` for time.
The `route` label is the route's pattern (`/admin/dlq`), never the raw path, so unknown paths
cannot create unbounded series; unmatched requests are counted as route `unmatched`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from redis.exceptions import RedisError

from gateway.keys import DB_POOL, REDIS, SETTINGS
from gateway.ops.status import read_backlog, read_streams

__all__ = [
    "HTTP_REQUESTS",
    "HTTP_SECONDS",
    "INGEST_EVENTS",
    "RATE_LIMITED",
    "middleware",
    "routes",
]

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

HTTP_REQUESTS = Counter(
    "ia_http_requests_total",
    "HTTP requests answered, by route and status.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "ia_http_request_duration_seconds",
    "Time to answer an HTTP request, by route.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_IN_FLIGHT = Gauge("ia_http_requests_in_flight", "HTTP requests being handled now.")
INGEST_EVENTS = Counter(
    "ia_ingest_events_total",
    "Events received by the ingest endpoints, by outcome (accepted, duplicate, rejected).",
    ["outcome"],
)
RATE_LIMITED = Counter(
    "ia_rate_limited_requests_total",
    "Requests refused with 429 by a rate-limit budget.",
    ["budget", "scope"],
)
SCRAPE_ERRORS = Counter(
    "ia_scrape_errors_total", "Scrape-time reads that failed, by source.", ["source"]
)
STREAM_LENGTH = Gauge("ia_stream_length", "Entries in a Redis stream.", ["stream"])
GROUP_LAG = Gauge(
    "ia_stream_group_lag", "Entries of a stream not yet delivered to a group.", ["stream", "group"]
)
GROUP_PENDING = Gauge(
    "ia_stream_group_pending",
    "Entries delivered to a group but not acknowledged.",
    ["stream", "group"],
)
GROUP_OLDEST_PENDING = Gauge(
    "ia_stream_group_oldest_pending_age_seconds",
    "Age of a group's oldest unacknowledged entry (0 when none).",
    ["stream", "group"],
)
GROUP_CONSUMERS = Gauge(
    "ia_stream_group_consumers_alive",
    "Consumers of a group seen within CLAIM_IDLE_MS.",
    ["stream", "group"],
)
BACKLOG = Gauge("ia_ingest_backlog_events", "Events appended but not yet acknowledged.")
DB_POOL_SIZE = Gauge(
    "ia_db_pool_connections",
    "Connections of this process's TimescaleDB pool, by state.",
    ["state"],
)
DB_POOL_MAX = Gauge("ia_db_pool_max_connections", "Upper bound of the TimescaleDB pool.")

# Series that exist from the start at 0, so `rate()` and alerts see the first increment.
for _outcome in ("accepted", "duplicate", "rejected"):
    INGEST_EVENTS.labels(_outcome)
for _source in ("redis", "database"):
    SCRAPE_ERRORS.labels(_source)

# A scrape waits at most this long for Redis and the pool; Prometheus' default timeout is 10 s.
SCRAPE_READ_TIMEOUT_S: Final = 2.0
_UNMATCHED: Final = "unmatched"


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else _UNMATCHED


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outside the error middleware, so refusals (4xx) are counted with their real status."""
    started = time.perf_counter()
    status = 500  # an exception that escapes every layer becomes aiohttp's 500
    HTTP_IN_FLIGHT.inc()
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        HTTP_IN_FLIGHT.dec()
        route = _route(request)
        HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
        HTTP_SECONDS.labels(request.method, route).observe(time.perf_counter() - started)


async def _refresh_streams(app: web.Application) -> None:
    redis, settings = app[REDIS], app[SETTINGS]
    streams = await read_streams(redis, settings)
    backlog = await read_backlog(redis, settings)
    # Cleared and refilled without an await in between, so a concurrent scrape never sees a
    # half-filled set and a deleted stream or group stops being exported.
    for gauge in (STREAM_LENGTH, GROUP_LAG, GROUP_PENDING, GROUP_OLDEST_PENDING, GROUP_CONSUMERS):
        gauge.clear()
    for s in streams:
        STREAM_LENGTH.labels(s.stream).set(s.length)
        for g in s.groups:
            if g.lag is not None:
                GROUP_LAG.labels(s.stream, g.group).set(g.lag)
            GROUP_PENDING.labels(s.stream, g.group).set(g.pending)
            GROUP_OLDEST_PENDING.labels(s.stream, g.group).set(g.oldest_pending_age_seconds or 0)
            GROUP_CONSUMERS.labels(s.stream, g.group).set(g.consumers_alive)
    BACKLOG.set(backlog)


async def _refresh_pool(app: web.Application) -> None:
    pool = await app[DB_POOL]()
    size, idle = pool.get_size(), pool.get_idle_size()
    DB_POOL_SIZE.labels("in_use").set(size - idle)
    DB_POOL_SIZE.labels("idle").set(idle)
    DB_POOL_MAX.set(pool.get_max_size())


async def _refresh(source: str, app: web.Application) -> None:
    refresh = _refresh_streams if source == "redis" else _refresh_pool
    try:
        async with asyncio.timeout(SCRAPE_READ_TIMEOUT_S):
            await refresh(app)
    except (TimeoutError, RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        SCRAPE_ERRORS.labels(source).inc()
        log.warning("metrics read failed", extra={"source": source, "error": repr(e)})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    await asyncio.gather(_refresh("redis", request.app), _refresh("database", request.app))
    # The text format by default; OpenMetrics when the scraper asks for it (exemplars, _created).
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encode(REGISTRY), headers={"Content-Type": content_type})
