"""Probes. `/health` is liveness only: it must answer even when Redis or TimescaleDB are down,
so an orchestrator restarts the process for its own faults, not for a dependency's.

`/ready` is readiness: Redis answers PING, TimescaleDB answers `SELECT 1`, and no migration is
pending. Each check runs under its own short timeout, all at once, so the probe answers within
about that timeout even when a server hangs instead of refusing. A failing probe answers 503
with the usual error body plus one `reason` per failing check; the full error goes to the log
(with the request id), not to this unauthenticated caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import asyncpg
from aiohttp import web
from redis.exceptions import RedisError

from gateway.errors import ApiError
from gateway.keys import DB_POOL, REDIS
from migrations import runner

__all__ = ["CHECK_TIMEOUT_S", "routes"]

log = logging.getLogger(__name__)

routes = web.RouteTableDef()
_STARTED = time.monotonic()
# Shorter than an orchestrator's usual probe timeout (Kubernetes: 1 s by default, often set to
# 3-5 s), long enough for a healthy server under load.
CHECK_TIMEOUT_S: Final = 2.0
_DEPENDENCY_ERRORS: Final = (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response(
        {"status": "ok", "uptime_seconds": round(time.monotonic() - _STARTED, 3)}
    )


class _NotReady(Exception):
    """A check's answer was wrong rather than missing (pending migrations)."""


async def _redis(request: web.Request) -> dict[str, Any]:
    await request.app[REDIS].ping()
    return {}


async def _database(request: web.Request) -> dict[str, Any]:
    pool = await request.app[DB_POOL]()
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")
        # pending() only reads; a pooled connection proxies every Connection method it uses.
        waiting = await runner.pending(cast(asyncpg.Connection, conn))
    if waiting:
        versions = ", ".join(f"{m.version:04d}" for m in waiting)
        raise _NotReady(f"{len(waiting)} pending migrations ({versions})")
    return {"migrations": "current"}


async def _check(
    name: str, probe: Callable[[web.Request], Awaitable[dict[str, Any]]], request: web.Request
) -> tuple[str, dict[str, Any]]:
    started = time.perf_counter()
    error = ""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            result: dict[str, Any] = {"ok": True, **await probe(request)}
    except TimeoutError:
        result = {"ok": False, "reason": f"no answer within {CHECK_TIMEOUT_S:g} s"}
    except _NotReady as e:
        result = {"ok": False, "reason": str(e)}
    except _DEPENDENCY_ERRORS as e:
        result = {"ok": False, "reason": f"unreachable ({type(e).__name__})"}
        error = repr(e)
    if not result["ok"]:
        log.warning(
            "readiness check failed",
            extra={"check": name, "reason": result["reason"], "error": error},
        )
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return name, result


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    checks = dict(
        await asyncio.gather(
            _check("redis", _redis, request), _check("database", _database, request)
        )
    )
    failing = {name: c["reason"] for name, c in checks.items() if not c["ok"]}
    if failing:
        message = "; ".join(f"{name}: {reason}" for name, reason in failing.items())
        raise ApiError(503, "not_ready", message, extra={"checks": checks})
    return web.json_response({"status": "ready", "checks": checks})
