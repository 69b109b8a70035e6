"""The full TimescaleDB edition (continuous aggregates, compression, policies) built from an
upstream source tree or tarball: `analytics services up --timescaledb-source PATH`.

Debian's package is repacked without `tsl/`, so the full edition our Docker users get can only
come from the upstream source. One server then holds both editions: the server's default
licence is set to `apache` (what every database gets, as with Debian's build), and a database
chosen with `--edition timescale` is switched to the full edition for its new sessions. The
reverse (a `timescale` server with an `apache` database) is refused by TimescaleDB itself.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import time
from pathlib import Path

from schemas.errors import ServicesError

from ._system import Session, run, say
from .postgres import Cluster, psql

__all__ = ["EDITIONS", "set_database_edition", "source_version", "tsl_installed", "install"]

EDITIONS = ("apache", "timescale")
_WORK_DIR = Path("/var/cache/inergize-analytics/timescaledb-full")
_VERSION = re.compile(r"^\s*version\s*=\s*(\d+\.\d+\.\d+)\s*$", re.MULTILINE)
# A rollup relation of migration 0004 tells which edition a database was migrated under: a
# continuous aggregate is a view, the Apache edition's rollup a table.
_ROLLUP = "profile_metrics_5min"


def _pkglibdir(cluster: Cluster) -> Path:
    config = f"/usr/lib/postgresql/{cluster.version}/bin/pg_config"
    return Path(run("locate libraries", [config, "--pkglibdir"]).strip())


def source_version(source: Path) -> str:
    """The TimescaleDB version a tarball or tree holds, from its `version.config`."""
    text: str | None = None
    if source.is_dir():
        config = source / "version.config"
        text = config.read_text() if config.is_file() else None
    elif source.is_file():
        try:
            with tarfile.open(source) as archive:
                member = next(
                    (m for m in archive.getmembers() if m.name.endswith("/version.config")), None
                )
                handle = archive.extractfile(member) if member is not None else None
                text = handle.read().decode() if handle is not None else None
        except (tarfile.TarError, OSError) as e:
            raise ServicesError("timescaledb source", f"{source}: {e}") from None
    else:
        raise ServicesError("timescaledb source", f"{source} does not exist")
    match = _VERSION.search(text or "")
    if match is None:
        raise ServicesError(
            "timescaledb source", f"{source} holds no version.config: not a TimescaleDB source"
        )
    return match[1]


def tsl_installed(cluster: Cluster, version: str) -> bool:
    """True when the full edition's library of `version` sits beside the server's modules."""
    return (_pkglibdir(cluster) / f"timescaledb-tsl-{version}.so").is_file()


def _unpack(source: Path, into: Path) -> Path:
    # An interrupted earlier build must not leave stale objects behind.
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    if source.is_dir():
        tree = into / source.name
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns("build", ".git"))
        return tree
    with tarfile.open(source) as archive:
        archive.extractall(into, filter="data")
    trees = [p for p in into.iterdir() if p.is_dir()]
    if len(trees) != 1 or not (trees[0] / "tsl").is_dir():
        raise ServicesError("timescaledb source", f"{source} is not one TimescaleDB tree with tsl/")
    return trees[0]


def install(cluster: Cluster, session: Session, source: Path) -> str:
    """Build and install the full edition from `source` unless that version's TSL library is
    already installed; returns the version."""
    version = source_version(source)
    if tsl_installed(cluster, version):
        say(f"TimescaleDB {version} full edition (TSL library) already installed")
        return version
    v = cluster.version
    tools = [f"postgresql-server-dev-{v}", "cmake", "build-essential"]
    session.apt_install("install build tools", tools)
    started = time.monotonic()
    tree = _unpack(source, _WORK_DIR / "src")
    say(f"Building TimescaleDB {version} (full edition) against PostgreSQL {v} in {tree}")
    options = [f"-DPG_CONFIG=/usr/lib/postgresql/{v}/bin/pg_config"]
    options += (
        "-DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF "
        "-DCMAKE_BUILD_TYPE=Release -DUSE_TELEMETRY=OFF -DSEND_TELEMETRY_DEFAULT=OFF"
    ).split()
    run("build timescaledb (full)", ["cmake", "-S", ".", "-B", "build", *options], cwd=tree)
    jobs = str(max(2, os.cpu_count() or 2))
    run("build timescaledb (full)", ["make", "-C", "build", f"-j{jobs}", "install"], cwd=tree)
    if not tsl_installed(cluster, version):
        raise ServicesError("build timescaledb (full)", "make install left no TSL library")
    seconds = round(time.monotonic() - started, 1)
    session.changed(
        "timescaledb full edition built",
        f"built and installed TimescaleDB {version} full edition ({seconds:.0f} s)",
        version=version,
        seconds=seconds,
    )
    return version


def set_database_edition(cluster: Cluster, session: Session, database: str, edition: str) -> None:
    """Make `database` run as `edition` for its new sessions. A database that already holds
    our schema keeps the edition it was migrated under: its rollups are views in one edition
    and tables in the other, so switching would break them."""
    query = (
        "SELECT current_setting('timescaledb.license', true), "
        "(SELECT relkind FROM pg_class WHERE relname = :'rollup' "
        " AND relnamespace = 'public'::regnamespace), "
        "(SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb')"
    )
    current, relkind, version = psql("set edition", cluster.port, query, database, rollup=_ROLLUP)[
        0
    ]
    if edition == "timescale" and not tsl_installed(cluster, version):
        raise ServicesError(
            "set edition",
            f"TimescaleDB {version} here is the Apache build: build the full edition first "
            "with --timescaledb-source PATH",
        )
    if current == edition:
        say(f"Database {database} already runs the {edition} edition")
        return
    if relkind:
        migrated = "timescale" if relkind == "v" else "apache"
        raise ServicesError(
            "set edition",
            f"database {database} was migrated under the {migrated} edition; "
            f"revert it (`analytics migrate down --to 0`) or drop it before choosing {edition}",
        )
    psql(
        "set edition",
        cluster.port,
        "ALTER DATABASE :\"db\" SET timescaledb.license = :'edition'",
        db=database,
        edition=edition,
    )
    session.changed(
        "database edition set",
        f"database {database} now runs the {edition} edition (new sessions)",
        database=database,
        edition=edition,
    )
