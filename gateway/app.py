"""The gateway application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis

from gateway.api import events as api_events
from gateway.api import goals as api_goals
from gateway.api import metrics as api_metrics
from gateway.api import rules as api_rules
from gateway.api import summary as api_summary
from gateway.api import system as api_system
from gateway.auth import check_jwt_settings
from gateway.errors import error_middleware
from gateway.http import bodies, compression, ratelimit, requestid, security
from gateway.http import prom as metrics
from gateway.ingest import routes as ingest
from gateway.ingest.appender import Appender
from gateway.ingest.packing import HiredisPackingConnection
from gateway.keys import APPENDER, CLOCK, DB_POOL, REDIS, SETTINGS, Clock
from gateway.ops import admin, health, openapi, perf, seed_jobs, status
from gateway.ops import seed as admin_seed
from gateway.ws import server as ws
from schemas.settings import Settings
from sinks import db

__all__ = ["create_app"]

# Concurrent Redis calls of one process: group commit needs few, the rest is headroom. The
# blocking pool makes callers past it wait instead of failing with MaxConnectionsError.
_REDIS_MAX_CONNECTIONS = 32
# Longer than any command we send (no XREAD BLOCK here), short enough to surface a dead server.
_REDIS_SOCKET_TIMEOUT_S = 10.0


def _wall_clock() -> datetime:
    return datetime.now(UTC)


def create_app(settings: Settings, *, clock: Clock = _wall_clock) -> web.Application:
    """The gateway; `clock` gives the routes' "now" (tests pin it)."""
    check_jwt_settings(settings)  # a bad JWT_PUBLIC_KEY stops the process at start
    # Outermost first: the request id is bound before anything logs, metrics see the status
    # the error middleware rendered, large answers and errors alike are compressed, and 429s
    # and preflights render as every other error; a coded body where none is inflated is
    # refused before it spends a rate-limit budget.
    middlewares = [
        requestid.middleware,
        metrics.middleware,
        compression.middleware,
        error_middleware,
        security.preflight_middleware,
        bodies.middleware,
        ratelimit.middleware,
    ]
    app = web.Application(client_max_size=settings.ingest_max_bytes, middlewares=middlewares)
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app.add_routes(health.routes)
    app.add_routes(ingest.routes)
    for group in (status.routes, metrics.routes, admin.routes, admin_seed.routes, openapi.routes):
        app.add_routes(group)
    # The analytics API (/api/v1); see gateway/api/common.py.
    for api_group in (api_metrics.routes, api_summary.routes, api_events.routes, api_goals.routes):
        app.add_routes(api_group)
    app.add_routes(api_system.routes)  # /api/v1/system: admin-only operations figures
    app.add_routes(api_rules.routes)  # /api/v1/alerts/rules: alert rules CRUD
    # Response hooks also reach the responses aiohttp builds itself (404, 500).
    app.on_response_prepare.append(requestid.on_response_prepare)
    app.on_response_prepare.append(security.on_response_prepare)
    app.on_response_prepare.append(ratelimit.on_response_prepare)
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_db_ctx)
    app.cleanup_ctx.append(perf.perf_ctx)  # after the two above: it samples through them
    # Seed runs are tasks of the app, cancelled in on_shutdown before Redis and the pool close.
    seed_jobs.setup(app)
    if settings.ws_enabled:
        ws.setup(app)  # `/ws` and the fan-out, which needs the two contexts above
    return app


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Redis client and the appender; nothing connects until the first request needs it,
    so /health answers while Redis is down."""
    settings = app[SETTINGS]
    pool = BlockingConnectionPool(
        host=settings.redis_host,
        port=settings.redis_port,
        db=settings.redis_db,
        password=settings.redis_password or None,
        max_connections=_REDIS_MAX_CONNECTIONS,
        timeout=_REDIS_SOCKET_TIMEOUT_S,
        socket_timeout=_REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=_REDIS_SOCKET_TIMEOUT_S,
        decode_responses=False,
        connection_class=HiredisPackingConnection,
    )
    redis = Redis.from_pool(pool)
    appender = Appender(redis, settings)
    app[REDIS] = redis
    app[APPENDER] = appender
    try:
        yield
    finally:
        try:
            await appender.close()
        finally:
            await redis.aclose()


async def _db_ctx(app: web.Application) -> AsyncIterator[None]:
    """A TimescaleDB pool opened on first use (today only `?wait=true` needs it), so ingest
    keeps working while the database is down; closed at shutdown if it was opened."""
    settings = app[SETTINGS]
    opening: asyncio.Task[asyncpg.Pool] | None = None

    async def get_pool() -> asyncpg.Pool:
        nonlocal opening
        if opening is None or (
            opening.done() and (opening.cancelled() or opening.exception() is not None)
        ):
            opening = asyncio.create_task(db.create_pool(settings))
        # Shielded: a caller that times out must not cancel a pool half-way open for others.
        return await asyncio.shield(opening)

    app[DB_POOL] = get_pool
    try:
        yield
    finally:
        if opening is not None:
            if not opening.done():
                opening.cancel()
                await asyncio.wait([opening])
            if not opening.cancelled() and opening.exception() is None:
                await opening.result().close()
