"""Numbered SQL migrations: `NNNN_name.up.sql` / `NNNN_name.down.sql` pairs in this directory.

`up` runs at every start (`analytics up`) and from `analytics migrate`, so it must be safe when
several replicas start together: a session advisory lock serialises them and each migration
commits atomically with its `schema_migrations` row. The read-only calls (`status`, `verify`,
`current_version`, `pending`) never create or lock anything, so a readiness probe can use them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import asyncpg

from schemas.errors import MigrationChecksumError, MigrationError, MigrationMissingObjectError

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

MIGRATIONS_DIR = Path(__file__).resolve().parent

# Every replica and every release must contend for the same lock, so this value never changes.
# It is int.from_bytes(sha256(b"inergize-analytics:schema_migrations")[:8], signed=True): an
# arbitrary, documented bigint that is unlikely to clash with other advisory-lock users here.
# Advisory locks are per database, so separate databases never block each other.
LOCK_KEY = 7121130559231006822

_FILE = re.compile(r"^(?P<version>\d{4,})_(?P<name>[a-z0-9_]+)\.(?P<kind>up|down)\.sql$")
_OBJECTS = re.compile(r"^--\s*objects:(?P<list>.*)$", re.MULTILINE)
_RELATION = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    execution_ms integer NOT NULL
)
"""
_INSERT = (
    "INSERT INTO schema_migrations (version, name, checksum, execution_ms) VALUES ($1, $2, $3, $4)"
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One up/down pair; `objects` are the relations the up file declares it creates."""

    version: int
    name: str
    up_sql: str
    down_sql: str
    checksum: str
    objects: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: datetime | None
    checksum_ok: bool


@dataclass(frozen=True, slots=True)
class _Applied:
    name: str
    checksum: str
    applied_at: datetime


def discover(directory: Path | None = None) -> list[Migration]:
    """Every migration in `directory`, sorted; refuses anything that makes the order ambiguous."""
    root = directory or MIGRATIONS_DIR
    if not root.is_dir():
        raise MigrationError(f"migrations directory {root} does not exist")
    pairs: dict[int, dict[str, Path]] = {}
    names: dict[int, str] = {}
    for path in sorted(root.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: expected a name like 0001_create_events.up.sql")
        version, name, kind = int(match["version"]), match["name"], match["kind"]
        if version == 0:
            raise MigrationError(f"{path.name}: numbering starts at 0001 (0 means nothing applied)")
        if names.setdefault(version, name) != name or kind in pairs.get(version, {}):
            raise MigrationError(f"{path.name}: version {version:04d} is used more than once")
        pairs.setdefault(version, {})[kind] = path
    migrations = []
    for expected, version in enumerate(sorted(pairs), start=1):
        if version != expected:
            raise MigrationError(f"numbering gap: {version:04d} found but {expected:04d} missing")
        files = pairs[version]
        for kind, other in (("up", "down"), ("down", "up")):
            if other not in files:
                raise MigrationError(f"{files[kind].name} has no matching .{other}.sql file")
        migrations.append(_load(version, names[version], files["up"], files["down"]))
    return migrations


def _load(version: int, name: str, up_path: Path, down_path: Path) -> Migration:
    raw = up_path.read_bytes()
    up_sql = raw.decode()
    listed = (item.strip() for m in _OBJECTS.finditer(up_sql) for item in m["list"].split(","))
    objects = tuple(item for item in listed if item)
    for item in objects:
        # to_regclass() would quietly report a typo as "missing"; catch it when the file is read.
        if not _RELATION.match(item):
            raise MigrationError(f"{up_path.name}: {item!r} in -- objects: is not a relation")
    return Migration(
        version=version,
        name=name,
        up_sql=up_sql,
        down_sql=down_path.read_text(),
        checksum=hashlib.sha256(raw).hexdigest(),
        objects=objects,
    )


async def _applied(conn: asyncpg.Connection) -> dict[int, _Applied]:
    # Read-only callers run before the first `up` ever did; a missing table means version 0.
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return {}
    rows = await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations")
    return {r["version"]: _Applied(r["name"], r["checksum"], r["applied_at"]) for r in rows}


def _check_checksums(migrations: Iterable[Migration], applied: dict[int, _Applied]) -> None:
    for m in migrations:
        row = applied.get(m.version)
        if row is not None and row.checksum != m.checksum:
            raise MigrationChecksumError(m.version, m.name, row.checksum, m.checksum)


async def _lock(conn: asyncpg.Connection) -> None:
    # Try first so an operator watching a hung start sees why it waits.
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
        log.info("waiting for the migration lock held by another process")
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)


async def _unlock(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return  # the server released the session lock with the session
    try:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        # Raising here would hide the error that got us into `finally`; the lock still ends
        # with the session.
        log.warning("could not release the migration lock; it ends with the connection")


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
                await conn.execute(_INSERT, m.version, m.name, m.checksum, ms)
            else:
                await conn.execute("DELETE FROM schema_migrations WHERE version = $1", m.version)
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
    await _lock(conn)
    try:
        await conn.execute(_CREATE_TABLE)
        # Read after locking: another replica may have applied migrations while we waited.
        applied = await _applied(conn)
        _check_checksums(migrations, applied)
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
        await _unlock(conn)


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
    await _lock(conn)
    try:
        applied = await _applied(conn)
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
        await _unlock(conn)


async def status(conn: asyncpg.Connection, directory: Path | None = None) -> list[MigrationStatus]:
    """Every migration file and whether it is applied; versions only the database knows are
    listed too (with `checksum_ok=False`), so status never hides part of the schema."""
    applied = await _applied(conn)
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
    applied = await _applied(conn)
    unknown = sorted(set(applied) - {m.version for m in migrations})
    if unknown:
        raise MigrationError(f"database has versions {unknown} that no migration file provides")
    _check_checksums(migrations, applied)
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
    return max(await _applied(conn), default=0)


async def pending(conn: asyncpg.Connection, directory: Path | None = None) -> list[Migration]:
    """Migrations not yet applied; for the readiness probe, so it neither locks nor writes."""
    applied = await _applied(conn)
    return [m for m in discover(directory) if m.version not in applied]


def new(description: str, directory: Path | None = None) -> tuple[Path, Path]:
    """Create the next numbered, empty up/down pair and return their paths."""
    slug = re.sub(r"[^a-z0-9]+", "_", description.lower()).strip("_")
    if not slug:
        raise MigrationError(f"description {description!r} has no letters or digits to name a file")
    root = directory or MIGRATIONS_DIR
    stem = f"{len(discover(root)) + 1:04d}_{slug}"
    up_path, down_path = root / f"{stem}.up.sql", root / f"{stem}.down.sql"
    up_path.write_text(
        "-- objects:\n"
        f"-- {' '.join(description.split())}\n"
        "-- List every table, view or index this file creates after `objects:` above (comma\n"
        "-- separated); `analytics migrate verify` checks they still exist. This file runs in\n"
        "-- one transaction, so avoid statements that refuse one (CREATE INDEX CONCURRENTLY).\n"
    )
    down_path.write_text(f"-- Revert {stem}: drop what the up file creates, newest first.\n")
    return up_path, down_path
