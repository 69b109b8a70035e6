"""The migration runner against a real, empty PostgreSQL database per test, with small fake
migrations in a temporary directory (never the project's real ones)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from migrations import runner
from schemas.errors import MigrationChecksumError, MigrationError, MigrationMissingObjectError
from schemas.settings import Settings
from sinks.db import connect

ScratchDb = Callable[[], Awaitable[Settings]]

UP = {
    1: "-- objects: a\nCREATE TABLE a (id integer PRIMARY KEY, v text);\n",
    2: "-- objects: a_v_idx\nCREATE INDEX a_v_idx ON a (v);\n",
    3: "-- objects: b, b_view\nCREATE TABLE b (id integer);\n"
    "CREATE VIEW b_view AS SELECT id FROM b;\n",
}
DOWN = {
    1: "DROP TABLE a;\n",
    2: "DROP INDEX a_v_idx;\n",
    3: "DROP VIEW b_view;\nDROP TABLE b;\n",
}
NAMES = {1: "create_a", 2: "index_a", 3: "create_b"}


def write_migrations(directory: Path, up: dict[int, str] | None = None) -> Path:
    for version, name in NAMES.items():
        stem = f"{version:04d}_{name}"
        (directory / f"{stem}.up.sql").write_text((up or {}).get(version, UP[version]))
        (directory / f"{stem}.down.sql").write_text(DOWN[version])
    return directory


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    return write_migrations(tmp_path)


@pytest.fixture
async def conn(scratch_db: ScratchDb) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(await scratch_db())
    yield connection
    await connection.close()


async def exists(conn: asyncpg.Connection, relation: str) -> bool:
    return await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", relation) is True


async def rows(conn: asyncpg.Connection) -> list[tuple[int, str, str]]:
    records = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY 1")
    return [(r["version"], r["name"], r["checksum"]) for r in records]


async def advisory_locks(conn: asyncpg.Connection) -> int:
    # Only this test's own database: other suites may hold advisory locks of their own.
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return count


async def test_read_only_calls_on_a_fresh_database_create_nothing(
    conn: asyncpg.Connection, mdir: Path
) -> None:
    assert await runner.current_version(conn) == 0
    assert [m.version for m in await runner.pending(conn, mdir)] == [1, 2, 3]
    assert [(s.version, s.applied_at) for s in await runner.status(conn, mdir)] == [
        (1, None),
        (2, None),
        (3, None),
    ]
    await runner.verify(conn, mdir)
    assert not await exists(conn, "schema_migrations")


async def test_up_down_round_trip(conn: asyncpg.Connection, mdir: Path) -> None:
    applied = await runner.up(conn, directory=mdir)

    assert [m.version for m in applied] == [1, 2, 3]
    expected = [(m.version, m.name, m.checksum) for m in runner.discover(mdir)]
    assert await rows(conn) == expected
    assert all(len(checksum) == 64 for _, _, checksum in expected)
    assert [await exists(conn, r) for r in ("a", "a_v_idx", "b", "b_view")] == [True] * 4
    assert await runner.current_version(conn) == 3
    assert await runner.pending(conn, mdir) == []
    assert await advisory_locks(conn) == 0

    assert await runner.up(conn, directory=mdir) == []
    assert len(await rows(conn)) == 3

    reverted = await runner.down(conn, to=0, directory=mdir)
    assert [m.version for m in reverted] == [3, 2, 1]
    assert await rows(conn) == []
    assert [await exists(conn, r) for r in ("a", "a_v_idx", "b", "b_view")] == [False] * 4
    assert await runner.current_version(conn) == 0
    assert await advisory_locks(conn) == 0

    assert [m.version for m in await runner.up(conn, directory=mdir)] == [1, 2, 3]
    assert await exists(conn, "b")


async def test_up_to_target_then_down_reverts_exactly_the_newer(
    conn: asyncpg.Connection, mdir: Path
) -> None:
    assert [m.version for m in await runner.up(conn, target=2, directory=mdir)] == [1, 2]
    assert await runner.current_version(conn) == 2
    assert not await exists(conn, "b")

    assert [m.version for m in await runner.down(conn, to=1, directory=mdir)] == [2]
    assert [v for v, _, _ in await rows(conn)] == [1]
    assert await exists(conn, "a")
    assert not await exists(conn, "a_v_idx")

    assert await runner.down(conn, to=1, directory=mdir) == []
    assert await runner.down(conn, to=5, directory=mdir) == []
    with pytest.raises(MigrationError, match="-1"):
        await runner.down(conn, to=-1, directory=mdir)
    with pytest.raises(MigrationError, match="target 4"):
        await runner.up(conn, target=4, directory=mdir)
    assert await runner.current_version(conn) == 1


async def test_verify_detects_edits_and_missing_objects(
    conn: asyncpg.Connection, mdir: Path
) -> None:
    await runner.up(conn, target=2, directory=mdir)
    await runner.verify(conn, mdir)

    await conn.execute("DROP INDEX a_v_idx")
    with pytest.raises(MigrationMissingObjectError) as missing:
        await runner.verify(conn, mdir)
    assert missing.value.missing == ["a_v_idx"]
    await conn.execute("CREATE INDEX a_v_idx ON a (v)")

    (mdir / "0002_index_a.up.sql").write_text(UP[2] + "-- an afterthought\n")
    with pytest.raises(MigrationChecksumError) as edited:
        await runner.verify(conn, mdir)
    assert edited.value.version == 2
    assert [(s.version, s.checksum_ok) for s in await runner.status(conn, mdir)] == [
        (1, True),
        (2, False),
        (3, True),
    ]
    # `up` must refuse before applying the still-pending 0003.
    with pytest.raises(MigrationChecksumError):
        await runner.up(conn, directory=mdir)
    assert not await exists(conn, "b")
    assert await advisory_locks(conn) == 0


async def test_verify_rejects_a_version_the_files_lack(
    conn: asyncpg.Connection, mdir: Path
) -> None:
    await runner.up(conn, directory=mdir)
    for suffix in ("up", "down"):
        (mdir / f"0003_create_b.{suffix}.sql").unlink()
    with pytest.raises(MigrationError, match=r"\[3\]"):
        await runner.verify(conn, mdir)
    statuses = await runner.status(conn, mdir)
    assert [(s.version, s.name, s.checksum_ok) for s in statuses][-1] == (3, "create_b", False)
    with pytest.raises(MigrationError, match="no files"):
        await runner.down(conn, to=0, directory=mdir)
    assert await runner.current_version(conn) == 3


async def test_concurrent_up_applies_each_migration_once(
    scratch_db: ScratchDb, tmp_path: Path
) -> None:
    # The sleep keeps the first runner inside 0002 while the second one arrives.
    mdir = write_migrations(tmp_path, {2: UP[2] + "SELECT pg_sleep(0.5);\n"})
    settings = await scratch_db()
    first, second = await connect(settings), await connect(settings)
    try:
        results = await asyncio.gather(
            runner.up(first, directory=mdir), runner.up(second, directory=mdir)
        )
        versions = sorted(m.version for result in results for m in result)
        assert versions == [1, 2, 3]
        assert [v for v, _, _ in await rows(first)] == [1, 2, 3]
        assert await advisory_locks(first) == 0
    finally:
        await first.close()
        await second.close()


async def test_failing_migration_rolls_back_only_itself(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    bad = "-- objects: b\nCREATE TABLE b (id integer);\nSELECT no_such_column FROM b;\n"
    mdir = write_migrations(tmp_path, {3: bad})

    with pytest.raises(MigrationError) as failed:
        await runner.up(conn, directory=mdir)

    message = str(failed.value)
    assert "0003" in message and "0003_create_b.up.sql" in message and "42703" in message
    assert isinstance(failed.value.__cause__, asyncpg.PostgresError)
    assert [v for v, _, _ in await rows(conn)] == [1, 2]
    assert await exists(conn, "a_v_idx")
    assert not await exists(conn, "b")
    assert await advisory_locks(conn) == 0


@pytest.mark.parametrize(
    ("remove", "add", "error"),
    [
        (["0002_index_a.up.sql", "0002_index_a.down.sql"], {}, "gap"),
        (["0003_create_b.down.sql"], {}, "0003_create_b.up.sql has no matching .down.sql"),
        (["0003_create_b.up.sql"], {}, "0003_create_b.down.sql has no matching .up.sql"),
        ([], {"0003_other.up.sql": "", "0003_other.down.sql": ""}, "more than once"),
        ([], {"4_short.up.sql": ""}, "expected a name like"),
        ([], {"0004_Upper.up.sql": ""}, "expected a name like"),
        ([], {"0000_zero.up.sql": "", "0000_zero.down.sql": ""}, "starts at 0001"),
        ([], {"0004_bad.up.sql": "-- objects: a b\n", "0004_bad.down.sql": ""}, "not a relation"),
    ],
)
def test_discover_rejects_ambiguous_directories(
    mdir: Path, remove: list[str], add: dict[str, str], error: str
) -> None:
    for name in remove:
        (mdir / name).unlink()
    for name, text in add.items():
        (mdir / name).write_text(text)
    with pytest.raises(MigrationError, match=error):
        runner.discover(mdir)


def test_discover_reads_objects_and_ignores_other_files(mdir: Path) -> None:
    (mdir / "README.md").write_text("not a migration")
    found = runner.discover(mdir)
    assert [(m.version, m.name) for m in found] == [
        (1, "create_a"),
        (2, "index_a"),
        (3, "create_b"),
    ]
    assert found[2].objects == ("b", "b_view")
    assert found[2].down_sql == DOWN[3]


def test_new_creates_the_next_pair(mdir: Path) -> None:
    up_path, down_path = runner.new("  Add Sessions-Table v2! ", mdir)

    assert (up_path.name, down_path.name) == (
        "0004_add_sessions_table_v2.up.sql",
        "0004_add_sessions_table_v2.down.sql",
    )
    assert up_path.read_text().startswith("-- objects:")
    assert down_path.exists()
    created = runner.discover(mdir)[-1]
    assert (created.version, created.objects) == (4, ())

    with pytest.raises(MigrationError):
        runner.new("  --- ", mdir)
    assert len(runner.discover(mdir)) == 4


def test_the_shipped_directory_is_this_package() -> None:
    assert runner.MIGRATIONS_DIR == Path(runner.__file__).parent
