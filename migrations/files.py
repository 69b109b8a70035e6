"""Migration files: finding, checking and checksumming the `NNNN_name.up.sql` /
`NNNN_name.down.sql` pairs in this directory, and creating the next empty pair.

Nothing here touches a database; `migrations.runner` applies what `discover` returns.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import MigrationError

__all__ = ["MIGRATIONS_DIR", "Migration", "discover", "new"]

MIGRATIONS_DIR = Path(__file__).resolve().parent

_FILE = re.compile(r"^(?P<version>\d{4,})_(?P<name>[a-z0-9_]+)\.(?P<kind>up|down)\.sql$")
_OBJECTS = re.compile(r"^--\s*objects:(?P<list>.*)$", re.MULTILINE)
_RELATION = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One up/down pair; `objects` are the relations the up file declares it creates."""

    version: int
    name: str
    up_sql: str
    down_sql: str
    checksum: str
    objects: tuple[str, ...]


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
