"""Numbered SQL migrations: `NNNN_name.up.sql` / `NNNN_name.down.sql` pairs in this directory
(found and checksummed by `migrations.files`), applied and reverted here; the bookkeeping table
and the advisory lock are `migrations.state`.

`up` runs at every start (`analytics up`) and from `analytics migrate`, so it must be safe when
several replicas start together: a session advisory lock serialises them and each migration
commits atomically with its `schema_migrations` row. The read-only calls (`status`, `verify`,
`current_version`, `pending`) never create or lock anything, so a readiness probe can use them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import asyncpg

from migrations import state
from migrations.files import MIGRATIONS_DIR, Migration, discover, new
from schemas.errors import MigrationError, MigrationMissingObjectError

# `from migrations import runner` is the package's one entry point (the CLI, the gateway's
# admin and health routes, the tests), so the file-side names are re-exported on purpose.
__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "MigrationStatus",
    "current_version",
    "discover",
    "down",
    "new",
    "pending",
    "status",
    "up",
    "verify",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: datetime | None
    checksum_ok: bool


async def _run(conn: asyncpg.Connection, m: Migration, direction: Literal["up", "down"]) -> int:
    """Run one direction of `m` with its bookkeeping row in one transaction; returns ms."""
    sql = m.up_sql if direction == "up" else m.down_sql
    filename = f"{m.version:04d}_{m.name}.{direction}.sql"
    started = time.perf_counter()
    try:
        async with conn.transaction():
            # No arguments: the simple query protocol accepts several statements in one string.
            await conn.execute(sql)
            ms = round((time.perf_counter() - started) * 1000)
            if direction == "up":
                await state.record_applied(conn, m, ms)
            else:
                await state.record_reverted(conn, m.version)
    except asyncpg.PostgresError as e:
        raise MigrationError(
            f"migration {m.version:04d} {direction} ({filename}) failed and was rolled back: "
            f"SQLSTATE {e.sqlstate}: {e}"
        ) from e
    return ms


async def up(
    conn: asyncpg.Connection, *, target: int | None = None, directory: Path | None = None
) -> list[Migration]:
    """Apply pending migrations up to `target` (default: all), in order; returns those applied.

    Refuses to start if any applied file was edited, since the database would then not match
    what the files describe. A failure rolls back only the failing migration.
    """
    migrations = discover(directory)
    if target is not None and not 0 <= target <= len(migrations):
        raise MigrationError(f"target {target} is outside 0..{len(migrations)}")
    await state.lock(conn)
    try:
        await state.create_table(conn)
        # Read after locking: another replica may have applied migrations while we waited.
        applied = await state.applied(conn)
        state.check_checksums(migrations, applied)
        unknown = sorted(set(applied) - {m.version for m in migrations})
        if unknown:
            # Newer code already migrated this database; older code may still run against an
            # additive schema, so this is not fatal here (`verify` does fail on it).
            log.warning("database has migrations this release lacks", extra={"versions": unknown})
        done: list[Migration] = []
        for m in migrations:
            if m.version in applied or (target is not None and m.version > target):
                continue
            ms = await _run(conn, m, "up")
            log.info(
                "migration applied", extra={"version": m.version, "migration": m.name, "ms": ms}
            )
            done.append(m)
        return done
    finally:
        await state.unlock(conn)


async def down(
    conn: asyncpg.Connection, *, to: int, directory: Path | None = None
) -> list[Migration]:
    """Revert applied migrations above version `to`, newest first; returns those reverted.

    Edited up files do not block this (reverting and re-applying is how an edit is deployed
    in development), but every version to revert must still have its files.
    """
    if to < 0:
        raise MigrationError(f"cannot migrate down to {to}; 0 reverts everything")
    by_version = {m.version: m for m in discover(directory)}
    await state.lock(conn)
    try:
        applied = await state.applied(conn)
        versions = sorted((v for v in applied if v > to), reverse=True)
        lacking = [v for v in versions if v not in by_version]
        if lacking:
            raise MigrationError(f"cannot revert {lacking}: no files for these versions")
        done: list[Migration] = []
        for v in versions:
            m = by_version[v]
            if applied[v].checksum != m.checksum:
                log.warning("reverting an edited migration", extra={"version": v})
            ms = await _run(conn, m, "down")
            log.info("migration reverted", extra={"version": v, "migration": m.name, "ms": ms})
            done.append(m)
        return done
    finally:
        await state.unlock(conn)


async def status(conn: asyncpg.Connection, directory: Path | None = None) -> list[MigrationStatus]:
    """Every migration file and whether it is applied; versions only the database knows are
    listed too (with `checksum_ok=False`), so status never hides part of the schema."""
    applied = await state.applied(conn)
    result = []
    for m in discover(directory):
        row = applied.pop(m.version, None)
        ok = row is None or row.checksum == m.checksum
        result.append(MigrationStatus(m.version, m.name, row.applied_at if row else None, ok))
    result += [MigrationStatus(v, r.name, r.applied_at, False) for v, r in applied.items()]
    return sorted(result, key=lambda s: s.version)


async def verify(conn: asyncpg.Connection, directory: Path | None = None) -> None:
    """Fail if the database does not match the applied files: unknown versions, edited files,
    or a declared relation that is gone. Only applied migrations are checked."""
    migrations = discover(directory)
    applied = await state.applied(conn)
    unknown = sorted(set(applied) - {m.version for m in migrations})
    if unknown:
        raise MigrationError(f"database has versions {unknown} that no migration file provides")
    state.check_checksums(migrations, applied)
    expected = [obj for m in migrations if m.version in applied for obj in m.objects]
    missing = await conn.fetch(
        "SELECT name FROM unnest($1::text[]) WITH ORDINALITY AS t(name, i)"
        " WHERE to_regclass(name) IS NULL ORDER BY i",
        expected,
    )
    if missing:
        raise MigrationMissingObjectError([r["name"] for r in missing])


async def current_version(conn: asyncpg.Connection) -> int:
    """Highest applied version; 0 when nothing (or not even the bookkeeping table) exists."""
    return max(await state.applied(conn), default=0)


async def pending(conn: asyncpg.Connection, directory: Path | None = None) -> list[Migration]:
    """Migrations not yet applied; for the readiness probe, so it neither locks nor writes."""
    applied = await state.applied(conn)
    return [m for m in discover(directory) if m.version not in applied]
