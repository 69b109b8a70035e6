"""`analytics services`, against the real local servers: on a ready machine `up` changes nothing.

These run the command as a subprocess, as a newcomer would, and compare what PostgreSQL and Redis
look like before and after. They expect `analytics services up` to have run once already.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from schemas.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "APP_ENV": "test",
        "TIMESCALE_HOST": settings.timescale_host,
        "TIMESCALE_PORT": str(settings.timescale_port),
        "TIMESCALE_USER": settings.timescale_user,
        "TIMESCALE_PASSWORD": settings.timescale_password,
        "TIMESCALE_DATABASE": settings.timescale_database,
        "REDIS_HOST": settings.redis_host,
        "REDIS_PORT": str(settings.redis_port),
        "REDIS_PASSWORD": settings.redis_password,
    }


async def _services(settings: Settings, action: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline.cli",
        "services",
        action,
        cwd=ROOT,
        env=_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _snapshot(settings: Settings) -> dict[str, Any]:
    """What a needless `up` would change: a restart, a rewritten config file, roles, databases."""
    conn = await asyncpg.connect(
        host=settings.timescale_host,
        port=settings.timescale_port,
        user=settings.timescale_user,
        password=settings.timescale_password or None,
        database=settings.timescale_database,
    )
    try:
        started = await conn.fetchval("SELECT pg_postmaster_start_time()")
        config_file = Path(await conn.fetchval("SELECT current_setting('config_file')"))
        # Only what `up` manages: other engineers' tests create databases and roles meanwhile.
        # An oid changes when a role or database is dropped and created again.
        roles = await conn.fetch(
            "SELECT oid, rolname, rolcanlogin, rolcreatedb FROM pg_roles WHERE rolname = $1",
            settings.timescale_user,
        )
        databases = await conn.fetch(
            "SELECT oid, datname, datdba FROM pg_database WHERE datname = $1",
            settings.timescale_database,
        )
        extensions = await conn.fetch(
            "SELECT oid, extversion FROM pg_extension WHERE extname = 'timescaledb'"
        )
    finally:
        await conn.close()
    client = aioredis.Redis(
        host=settings.redis_host, port=settings.redis_port, password=settings.redis_password or None
    )
    try:
        redis_run_id = (await client.info("server"))["run_id"]
    finally:
        await client.aclose()
    files = [config_file, *sorted((config_file.parent / "conf.d").iterdir())]
    return {
        "postmaster_started": started,
        "files": {str(f): (f.stat().st_mtime_ns, f.read_text()) for f in files},
        "roles": [tuple(r) for r in roles],
        "databases": [tuple(r) for r in databases],
        "extensions": [tuple(r) for r in extensions],
        "redis_run_id": redis_run_id,
    }


async def test_up_on_a_ready_machine_changes_nothing(settings: Settings) -> None:
    before = await _snapshot(settings)
    assert before["roles"] and before["databases"] and before["extensions"], before
    started = time.monotonic()
    code, out = await _services(settings, "up")
    elapsed = time.monotonic() - started
    after = await _snapshot(settings)

    assert code == 0, out
    assert after == before
    assert "nothing changed" in out, out
    assert "edition (timescaledb.license = " in out, out
    assert elapsed < 20, f"a second `up` should take seconds, took {elapsed:.1f} s"


async def test_status_reports_versions_and_the_timescaledb_edition(settings: Settings) -> None:
    conn = await asyncpg.connect(
        host=settings.timescale_host,
        port=settings.timescale_port,
        user=settings.timescale_user,
        password=settings.timescale_password or None,
        database=settings.timescale_database,
    )
    try:
        row = await conn.fetchrow(
            "SELECT extversion, current_setting('timescaledb.license') "
            "FROM pg_extension WHERE extname = 'timescaledb'"
        )
    finally:
        await conn.close()
    assert row is not None, "timescaledb is not created in the test database"
    version, license_ = row

    code, out = await _services(settings, "status")

    assert code == 0, out
    lines = out.splitlines()
    timescale = next(line for line in lines if line.startswith("TimescaleDB"))
    assert f" {version}, " in timescale and f"(timescaledb.license = {license_})" in timescale
    assert any(line.startswith("Redis") and "not running" not in line for line in lines), out
    assert any(line.startswith("PostgreSQL") and "not running" not in line for line in lines), out
