"""Connections to TimescaleDB built from settings, so no caller assembles credentials itself."""

from __future__ import annotations

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from schemas.settings import Settings

__all__ = ["Conn", "connect", "create_pool"]

# Every time-range query passes its bounds as parameters, and only a plan made for their values
# lets PostgreSQL skip chunks outside the range. asyncpg prepares statements, and after five
# runs PostgreSQL may switch to a generic plan that opens and locks every chunk of a hypertable
# (thousands after 90 days). Planning per execution costs far less than that.
_SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


async def connect(settings: Settings, *, database: str | None = None) -> asyncpg.Connection:
    """One connection; `database` overrides the configured one (`postgres` to create it)."""
    return await asyncpg.connect(
        host=settings.timescale_host,
        port=settings.timescale_port,
        user=settings.timescale_user,
        password=settings.timescale_password or None,
        database=database or settings.timescale_database,
        server_settings=_SERVER_SETTINGS,
    )


async def create_pool(settings: Settings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        host=settings.timescale_host,
        port=settings.timescale_port,
        user=settings.timescale_user,
        password=settings.timescale_password or None,
        database=settings.timescale_database,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        server_settings=_SERVER_SETTINGS,
    )
    assert pool is not None  # noqa: S101 - asyncpg types the pool as optional only for its __await__
    return pool


# What a pool hands out behaves as a connection; accept both wherever a connection is used.
Conn = asyncpg.Connection | PoolConnectionProxy
