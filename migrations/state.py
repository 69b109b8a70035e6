"""What the database knows about migrations: the `schema_migrations` table (one row per
applied version, with the checksum of the file it ran) and the advisory lock that serialises
replicas running `up` or `down` together.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from migrations.files import Migration
from schemas.errors import MigrationChecksumError

__all__ = [
    "LOCK_KEY",
    "Applied",
    "applied",
    "check_checksums",
    "create_table",
    "lock",
    "record_applied",
    "record_reverted",
    "unlock",
]

# The migration log lines keep the logger they had before the runner was split into modules,
# so log queries on `logger == "migrations.runner"` still find all of them.
log = logging.getLogger("migrations.runner")

# Every replica and every release must contend for the same lock, so this value never changes.
# It is int.from_bytes(sha256(b"inergize-analytics:schema_migrations")[:8], signed=True): an
# arbitrary, documented bigint that is unlikely to clash with other advisory-lock users here.
# Advisory locks are per database, so separate databases never block each other.
LOCK_KEY = 7121130559231006822

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
class Applied:
    """The `schema_migrations` row of one applied version."""

    name: str
    checksum: str
    applied_at: datetime


async def create_table(conn: asyncpg.Connection) -> None:
    await conn.execute(_CREATE_TABLE)


async def applied(conn: asyncpg.Connection) -> dict[int, Applied]:
    # Read-only callers run before the first `up` ever did; a missing table means version 0.
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return {}
    rows = await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations")
    return {r["version"]: Applied(r["name"], r["checksum"], r["applied_at"]) for r in rows}


def check_checksums(migrations: Iterable[Migration], rows: dict[int, Applied]) -> None:
    """Raise if a file of an applied version changed since it ran."""
    for m in migrations:
        row = rows.get(m.version)
        if row is not None and row.checksum != m.checksum:
            raise MigrationChecksumError(m.version, m.name, row.checksum, m.checksum)


async def record_applied(conn: asyncpg.Connection, m: Migration, ms: int) -> None:
    """Inside the migration's transaction, so the row commits with the schema change."""
    await conn.execute(_INSERT, m.version, m.name, m.checksum, ms)


async def record_reverted(conn: asyncpg.Connection, version: int) -> None:
    """Inside the revert's transaction, so the row goes with the schema change."""
    await conn.execute("DELETE FROM schema_migrations WHERE version = $1", version)


async def lock(conn: asyncpg.Connection) -> None:
    # Try first so an operator watching a hung start sees why it waits.
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
        log.info("waiting for the migration lock held by another process")
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)


async def unlock(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return  # the server released the session lock with the session
    try:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        # Raising here would hide the error that got us into `finally`; the lock still ends
        # with the session.
        log.warning("could not release the migration lock; it ends with the connection")
