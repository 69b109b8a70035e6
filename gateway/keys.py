"""Typed application keys, in one module so every route group agrees on them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from schemas.settings import Settings

if TYPE_CHECKING:
    # Types only: the appender and the fan-out import route modules that read these keys, so
    # importing them here would close an import circle.
    from gateway.ingest.appender import Appender
    from gateway.ws.fanout import Fanout

__all__ = ["APPENDER", "CLOCK", "DB_POOL", "FANOUT", "REDIS", "SETTINGS", "Clock", "PoolGetter"]

SETTINGS = web.AppKey("settings", Settings)
# One client (a BlockingConnectionPool) per process, shared by every route group.
REDIS = web.AppKey("redis", Redis)
# The group-commit appender of this process; see gateway/ingest/appender.py.
APPENDER: web.AppKey[Appender] = web.AppKey("appender")

# The pool opens on first use, so the gateway starts and ingests while TimescaleDB is down;
# only the routes that read the database wait for it.
PoolGetter = Callable[[], Awaitable[asyncpg.Pool]]
DB_POOL: web.AppKey[PoolGetter] = web.AppKey("db_pool")
# The instant every route computes "now" from (windows, default ranges, goal deadlines): the
# wall clock in production; tests pass a fixed instant so answers do not depend on the day.
Clock = Callable[[], datetime]
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
# The WebSocket fan-out of this process, shared by `/ws` here and `/` on WS_PORT.
FANOUT: web.AppKey[Fanout] = web.AppKey("fanout")
