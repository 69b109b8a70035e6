"""Shared fixtures. Tests talk to the real PostgreSQL (with TimescaleDB) and Redis located by
`TEST_DATABASE_URL` and `TEST_REDIS_URL`; nothing here mocks either.

`TEST_TIMESCALE_EDITION` (`apache`, the default, or `timescale`) is the edition every database
the suite creates runs: `timescale` needs the full build (`analytics services up
--timescaledb-source PATH`) on a server whose default licence is apache. The suite refuses to
start on any other edition than the one asked for, so a run always says what it tested."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from schemas.settings import Settings

if TYPE_CHECKING:
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer
    from redis.asyncio import Redis

    from tests.ops_support import MakeClient

TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/inergize_analytics_test"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_TIMESCALE_EDITION = os.environ.get("TEST_TIMESCALE_EDITION", "apache")
if TEST_TIMESCALE_EDITION not in ("apache", "timescale"):
    raise pytest.UsageError("TEST_TIMESCALE_EDITION must be apache or timescale")


def settings_for(database: str | None = None, **overrides: Any) -> Settings:
    """Settings pointing at the test servers; `database` picks another database on them."""
    db = urlsplit(TEST_DATABASE_URL)
    rd = urlsplit(TEST_REDIS_URL)
    base = Settings.from_env({"APP_ENV": "test"})
    derived: dict[str, Any] = {
        "timescale_host": db.hostname or "127.0.0.1",
        "timescale_port": db.port or 5432,
        "timescale_user": db.username or "postgres",
        "timescale_password": db.password or "",
        "timescale_database": database or db.path.lstrip("/"),
        "redis_host": rd.hostname or "127.0.0.1",
        "redis_port": rd.port or 6379,
        "redis_db": int(rd.path.lstrip("/") or 0),
    }
    return dataclasses.replace(base, **{**derived, **overrides})


async def create_database(admin: asyncpg.Connection, name: str) -> None:
    """A new database of the suite's edition (TEST_TIMESCALE_EDITION)."""
    await admin.execute(f'CREATE DATABASE "{name}"')
    if TEST_TIMESCALE_EDITION == "timescale":
        await admin.execute(f"ALTER DATABASE \"{name}\" SET timescaledb.license = 'timescale'")


async def _admin() -> asyncpg.Connection:
    s = settings_for()
    return await asyncpg.connect(
        host=s.timescale_host,
        port=s.timescale_port,
        user=s.timescale_user,
        password=s.timescale_password or None,
        database="postgres",
    )


@pytest.fixture
def settings() -> Settings:
    return settings_for()


ScratchDb = Callable[[], Awaitable[Settings]]


@pytest.fixture
async def scratch_db() -> AsyncIterator[ScratchDb]:
    """Factory of empty databases, dropped after the test; for tests that need schema version 0."""
    created: list[str] = []

    async def make() -> Settings:
        name = f"ia_scratch_{uuid.uuid4().hex[:12]}"
        admin = await _admin()
        try:
            await create_database(admin, name)
        finally:
            await admin.close()
        created.append(name)
        return settings_for(name)

    yield make
    admin = await _admin()
    try:
        for name in created:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def migrated() -> Settings:
    """The test database, created afresh for each session at the newest schema version: a
    database left by earlier runs accumulates chunks and rows that slow every later run."""
    from migrations import runner
    from sinks.db import connect

    s = settings_for()
    admin = await _admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{s.timescale_database}" WITH (FORCE)')
        await create_database(admin, s.timescale_database)
    finally:
        await admin.close()
    conn = await connect(s)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        running = await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
        if running != TEST_TIMESCALE_EDITION:
            pytest.exit(
                f"TEST_TIMESCALE_EDITION={TEST_TIMESCALE_EDITION} but the test database runs "
                f"{running!r}: the full edition needs `analytics services up "
                "--timescaledb-source PATH` (README, Tests)",
                returncode=2,
            )
        await runner.up(conn)
    finally:
        await conn.close()
    return s


# The operations suites' gateways (tests/ops_support.py, Redis db 10); imported when used, since
# ops_support itself builds on this module.
@pytest.fixture
async def ops_redis() -> AsyncIterator[Redis]:
    from tests.ops_support import flushed_redis

    async with flushed_redis() as client:
        yield client


@pytest.fixture
async def make_client(ops_redis: Redis) -> AsyncIterator[MakeClient]:
    from tests.ops_support import gateways

    async with gateways() as make:
        yield make


# The WebSocket suites' Redis (tests/ws_support.py, db 11), HTTP client and default gateway; a
# module defines its own to differ (e.g. a gateway with other settings).
@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    from tests.ws_support import ws_redis

    async with ws_redis() as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    from aiohttp import ClientSession

    async with ClientSession() as session:
        yield session


@pytest.fixture
async def gw(migrated: Settings, redis: Redis) -> AsyncIterator[TestServer]:
    from tests.ws_support import gateway, ws_settings

    async with gateway(ws_settings(migrated)) as server:
        yield server


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Shown with -q too: two runs of the suite in one CI log must say which edition each was.
    terminalreporter.write_line(f"TimescaleDB edition under test: {TEST_TIMESCALE_EDITION}")
