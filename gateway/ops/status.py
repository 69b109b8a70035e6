"""`GET /status` (producer and admin tokens; 403 for users): whether the pipeline keeps up, in
one JSON document. End users have no use for it, and it names the PID and exact PostgreSQL
and TimescaleDB versions an attacker would look up.

Per stream its length; per consumer group its lag (entries not yet delivered), pending count
(delivered, not acknowledged), the age of its oldest pending entry and how many consumers are
alive (seen within CLAIM_IDLE_MS, after which their entries are reclaimed anyway); the DLQ
length; the TimescaleDB edition, version, chunk counts per hypertable and rollup freshness
(newest bucket of each rollup); this process's WebSocket connections, RSS and CPU. Each
section is read under its own timeout and fails alone: an operator most needs this page when
a dependency is down, so a dead database still leaves the stream figures.

`read_streams` is shared with `/metrics`, which exports the same figures as gauges.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from typing import Any, Final

import asyncpg
import orjson
from aiohttp import web
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.auth import require_role
from gateway.keys import DB_POOL, REDIS, SETTINGS
from schemas.dead_letters import text
from schemas.settings import Settings
from schemas.streams import ALERTS_STREAM, DLQ_STREAM, METRICS_STREAM, backlog_key, events_stream

__all__ = ["GroupInfo", "StreamInfo", "process_info", "read_backlog", "read_streams", "routes"]

routes = web.RouteTableDef()

# Long enough for a loaded Redis or database, short enough that the page answers while one hangs.
SECTION_TIMEOUT_S: Final = 3.0
_STARTED: Final = time.monotonic()
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")

_EDITION_SQL: Final = """
SELECT current_setting('timescaledb.license', true) AS edition,
       (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS version,
       current_setting('server_version') AS postgres
"""
_CHUNKS_SQL: Final = """
SELECT h.hypertable_name AS name, count(c.chunk_name) AS chunks
FROM timescaledb_information.hypertables h
LEFT JOIN timescaledb_information.chunks c
  ON c.hypertable_schema = h.hypertable_schema AND c.hypertable_name = h.hypertable_name
GROUP BY h.hypertable_name ORDER BY h.hypertable_name
"""
# The rollups the API reads (tables on the Apache edition, continuous aggregates on the full).
_ROLLUPS: Final = (
    "profile_metrics_5min",
    "profile_metrics_hourly",
    "profile_metrics_daily",
    "engagement_hourly",
)
_ROLLUPS_SQL: Final = " UNION ALL ".join(
    f"SELECT '{name}' AS name, max(bucket) AS newest, now() AS now FROM {name}"  # noqa: S608 - constants
    for name in _ROLLUPS
)


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group: str
    lag: int | None  # None when Redis cannot tell (entries deleted past the group's position)
    pending: int
    oldest_pending_age_seconds: float | None
    consumers: int
    consumers_alive: int


@dataclass(frozen=True, slots=True)
class StreamInfo:
    stream: str
    length: int
    groups: list[GroupInfo]


def _streams(settings: Settings) -> list[str]:
    return [
        *(events_stream(p) for p in range(settings.stream_partitions)),
        METRICS_STREAM,
        ALERTS_STREAM,
        DLQ_STREAM,
    ]


async def read_streams(redis: Redis, settings: Settings) -> list[StreamInfo]:
    """Every known stream and its groups, in two pipelined round trips plus one per group."""
    names = _streams(settings)
    async with redis.pipeline(transaction=False) as pipe:
        _ = pipe.time()
        for name in names:
            _ = pipe.xlen(name)
            _ = pipe.xinfo_groups(name)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    now_s, micros = replies[0]
    now_ms = now_s * 1000 + micros // 1000  # the server's clock, the one entry ids come from
    found: list[tuple[str, int, list[dict[str, Any]]]] = []
    for i, name in enumerate(names):
        length, groups = replies[1 + 2 * i], replies[2 + 2 * i]
        if isinstance(length, BaseException):
            raise length
        # A stream that does not exist yet has no groups: XINFO answers an error for it.
        found.append((name, int(length), [] if isinstance(groups, BaseException) else groups))
    async with redis.pipeline(transaction=False) as pipe:
        for name, _, groups in found:
            for g in groups:
                _ = pipe.xpending(name, g["name"])
                _ = pipe.xinfo_consumers(name, g["name"])
        details: list[Any] = await pipe.execute()
    alive_ms = settings.claim_idle_ms
    out: list[StreamInfo] = []
    k = 0
    for name, length, groups in found:
        infos: list[GroupInfo] = []
        for g in groups:
            summary, consumers = details[k], details[k + 1]
            k += 2
            oldest: float | None = None
            if summary["pending"] and summary["min"]:
                oldest_ms = int(text(summary["min"]).partition("-")[0])
                oldest = max(0.0, (now_ms - oldest_ms) / 1000)
            infos.append(
                GroupInfo(
                    group=text(g["name"]),
                    lag=None if g.get("lag") is None else int(g["lag"]),
                    pending=int(g["pending"]),
                    oldest_pending_age_seconds=oldest,
                    consumers=len(consumers),
                    consumers_alive=sum(1 for c in consumers if int(c["idle"]) < alive_ms),
                )
            )
        out.append(StreamInfo(name, length, infos))
    return out


async def read_backlog(redis: Redis, settings: Settings) -> int:
    """Events appended but not acknowledged, as the ingest backpressure counts them."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(settings.stream_partitions):
            _ = pipe.hmget(backlog_key(p), ["appended", "acked"])
        rows: list[list[bytes | None]] = await pipe.execute()
    return sum(max(0, int(a or 0) - int(b or 0)) for a, b in rows)


_last_cpu: list[float] = [time.monotonic(), time.process_time()]


def process_info() -> dict[str, Any]:
    """RSS now (from /proc; the peak where /proc is missing), CPU seconds and CPU share since
    the previous call (or the start), so two reads a minute apart give that minute's load."""
    try:
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * _PAGE
    except OSError:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    wall, cpu = time.monotonic(), time.process_time()
    span = wall - _last_cpu[0]
    share = (cpu - _last_cpu[1]) / span * 100 if span > 0 else 0.0
    _last_cpu[:] = [wall, cpu]
    return {
        "pid": os.getpid(),
        "rss_bytes": rss,
        "cpu_seconds": round(cpu, 3),
        "cpu_percent": round(share, 1),
        "uptime_seconds": round(wall - _STARTED, 3),
    }


async def _redis_section(request: web.Request) -> dict[str, Any]:
    redis, settings = request.app[REDIS], request.app[SETTINGS]
    streams = await read_streams(redis, settings)
    dlq = next(s for s in streams if s.stream == DLQ_STREAM)
    return {
        "streams": [asdict(s) for s in streams],
        "dlq": {"length": dlq.length},
        "backlog_events": await read_backlog(redis, settings),
    }


async def _database_section(request: web.Request) -> dict[str, Any]:
    pool = await request.app[DB_POOL]()
    async with pool.acquire() as conn:
        row = await conn.fetchrow(_EDITION_SQL)
        chunks = await conn.fetch(_CHUNKS_SQL)
        rollups = await conn.fetch(_ROLLUPS_SQL)
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    return {
        "timescaledb_edition": row["edition"],
        "timescaledb_version": row["version"],
        "postgres_version": row["postgres"],
        "chunks": {r["name"]: int(r["chunks"]) for r in chunks},
        # Age of each rollup's newest bucket: how far behind the raw data it may be.
        "rollups": {
            r["name"]: {
                "newest_bucket": r["newest"].isoformat() if r["newest"] else None,
                "age_seconds": (r["now"] - r["newest"]).total_seconds() if r["newest"] else None,
            }
            for r in rollups
        },
    }


async def _section(name: str, read: Awaitable[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    try:
        async with asyncio.timeout(SECTION_TIMEOUT_S):
            return name, await read
    except TimeoutError:
        return name, {"error": f"timed out after {SECTION_TIMEOUT_S:g} s"}
    except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        return name, {"error": f"unavailable ({type(e).__name__})"}


@routes.get("/status")
async def status(request: web.Request) -> web.Response:
    require_role(request, "producer", "admin")
    sections = dict(
        await asyncio.gather(
            _section("redis", _redis_section(request)),
            _section("database", _database_section(request)),
        )
    )
    # This process's sockets (the WebSocket service's gauge; absent when it is off).
    sockets = REGISTRY.get_sample_value("ia_ws_connections")
    body = {
        "process": process_info(),
        "websocket": {"connections": None if sockets is None else int(sockets)},
        **sections,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")
