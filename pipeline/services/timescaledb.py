"""TimescaleDB for the local cluster: the apt package where there is one, else (Debian 12) the
Apache edition built from Debian 13's source package, or the full edition from an upstream
source when one is given (full_edition.py); then preloaded by the server."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from schemas.errors import ServicesError

from . import full_edition
from ._system import Session, apt_candidate, run, say
from .postgres import Cluster, pg_ctl, psql, wait_ready

__all__ = ["ensure_timescaledb"]

_WORK_DIR = Path("/var/cache/inergize-analytics/timescaledb-build")
_APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
_DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bookworm's debian-archive-keyring 2023.3+deb12u2 already holds the trixie archive keys.
_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_CONF_NAME = "95-timescaledb.conf"
# TimescaleDB's 16 background workers, PostgreSQL's own and a few parallel query workers; the
# default of 8 starves TimescaleDB's scheduler.
_MIN_WORKERS = 27
# A query without a time bound (the latest snapshot of a user) locks every chunk of a
# hypertable and its index: with 6-hour chunks x 4 space partitions over 90 days that is
# thousands of locks, past the default 64 per transaction ("out of shared memory").
_MIN_LOCKS = 1024


def _mirror() -> str:
    """The mirror the machine's own apt sources use for the main archive (not -security)."""
    try:
        stanzas = re.split(r"\n\s*\n", _APT_SOURCES.read_text())
    except OSError:
        return _DEFAULT_MIRROR
    for stanza in stanzas:
        uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE | re.IGNORECASE)
        suites = re.search(r"^Suites:\s*(.+)$", stanza, re.MULTILINE | re.IGNORECASE)
        if uris and suites and not all(s.endswith("-security") for s in suites[1].split()):
            return uris[1].rstrip("/")
    return _DEFAULT_MIRROR


def _fetch_source(src: Path) -> Path:
    """Download and unpack Debian 13's `timescaledb` source package, leaving the system's apt
    sources, lists and cache untouched: everything lives under `_WORK_DIR`."""
    lists, cache = _WORK_DIR / "lists", _WORK_DIR / "cache"
    for directory in (lists / "partial", cache / "archives" / "partial", src):
        directory.mkdir(parents=True, exist_ok=True)
    sources = _WORK_DIR / "sources.list"
    mirror = _mirror()
    sources.write_text(f"deb-src [signed-by={_KEYRING}] {mirror} trixie main\n")
    overrides = [
        f"Dir::Etc::sourcelist={sources}",
        "Dir::Etc::sourceparts=-",
        f"Dir::State::Lists={lists}",
        f"Dir::Cache={cache}",
    ]
    private = [arg for override in overrides for arg in ("-o", override)]
    say(f"Fetching Debian 13's timescaledb source package from {mirror}")
    try:
        run("fetch timescaledb source", ["apt-get", "-q", *private, "update"])
    except ServicesError as e:
        if "NO_PUBKEY" in e.detail:
            raise ServicesError(
                e.step,
                e.detail + "\nupgrade debian-archive-keyring: releases "
                "from 2023.3+deb12u2 on carry Debian 13's keys",
            ) from None
        raise
    run("fetch timescaledb source", ["apt-get", "-q", *private, "source", "timescaledb"], cwd=src)
    trees = [p for p in src.iterdir() if p.is_dir()]
    if len(trees) != 1:
        raise ServicesError("fetch timescaledb source", f"expected one source tree in {src}")
    return trees[0]


def _build(cluster: Cluster, session: Session) -> None:
    v = cluster.version
    tools = [f"postgresql-server-dev-{v}", "cmake", "build-essential", "dpkg-dev"]
    session.apt_install("install build tools", tools)
    started = time.monotonic()
    src = _WORK_DIR / "src"
    # An interrupted earlier build must not leave stale objects behind.
    shutil.rmtree(src, ignore_errors=True)
    tree = _fetch_source(src)
    say(f"Building {tree.name} (Apache edition) against PostgreSQL {v} in {tree}")
    options = [f"-DPG_CONFIG=/usr/lib/postgresql/{v}/bin/pg_config"]
    options += (
        "-DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF "
        "-DUSE_TELEMETRY=OFF -DSEND_TELEMETRY_DEFAULT=OFF"
    ).split()
    run("build timescaledb", ["cmake", "-S", ".", "-B", "build", *options], cwd=tree)
    jobs = str(max(2, os.cpu_count() or 2))
    run("build timescaledb", ["make", "-C", "build", f"-j{jobs}", "install"], cwd=tree)
    seconds = round(time.monotonic() - started, 1)
    session.changed(
        "timescaledb built",
        f"built and installed {tree.name} ({seconds:.0f} s)",
        source=tree.name,
        seconds=seconds,
    )


def _includes_conf_d(config_file: Path) -> bool:
    pattern = re.compile(r"^\s*include_dir\s*=?\s*'conf\.d'", re.MULTILINE)
    return pattern.search(config_file.read_text()) is not None


def _configure(cluster: Cluster, session: Session, apache_default: bool) -> None:
    """Preload TimescaleDB with enough workers and locks; with `apache_default` (a full build
    is installed) also pin the server's default licence to apache, so every database is the
    Apache edition unless chosen otherwise (full_edition.set_database_edition)."""
    query = (
        "SELECT current_setting('shared_preload_libraries'), "
        "current_setting('max_worker_processes'), current_setting('config_file'), "
        "current_setting('max_locks_per_transaction'), "
        "coalesce(current_setting('timescaledb.license', true), '')"
    )
    preload_raw, workers, config_file, locks, license_ = psql(
        "configure postgresql", cluster.port, query
    )[0]
    path = Path(config_file).parent / "conf.d" / _CONF_NAME
    # Once written, the licence line stays: dropping it would turn every database of a
    # full build into the full edition at the next restart.
    apache_default = apache_default or (
        path.is_file() and "timescaledb.license" in path.read_text()
    )
    preload = [lib.strip() for lib in preload_raw.split(",") if lib.strip()]
    if (
        "timescaledb" in preload
        and int(workers) >= _MIN_WORKERS
        and int(locks) >= _MIN_LOCKS
        and (not apache_default or license_ == "apache")
    ):
        say(
            f"PostgreSQL already preloads timescaledb, max_worker_processes = {workers}, "
            f"max_locks_per_transaction = {locks}, default licence {license_}: "
            "no restart needed"
        )
        return
    if not _includes_conf_d(Path(config_file)):
        raise ServicesError(
            "configure postgresql",
            f"{config_file} does not include_dir 'conf.d'; add that line, then run again",
        )
    path.write_text(_conf_text(preload, int(workers), int(locks), apache_default))
    say(f"Wrote {path}; restarting PostgreSQL {cluster.version}/{cluster.name} to load it")
    _restart_and_check(cluster, session, path)


def _conf_text(preload: list[str], workers: int, locks: int, apache_default: bool) -> str:
    libraries = ",".join(["timescaledb", *(lib for lib in preload if lib != "timescaledb")])
    # telemetry_level is only a placeholder in our no-telemetry build; packaged builds obey it.
    return (
        "# Written by `analytics services up`: TimescaleDB must be preloaded, and its background\n"
        "# workers need more than the default 8 worker processes, and queries spanning many\n"
        "# chunks more than the default 64 locks per transaction.\n"
        f"shared_preload_libraries = '{libraries}'\n"
        "timescaledb.telemetry_level = off\n"
        f"max_worker_processes = {max(workers, _MIN_WORKERS)}\n"
        f"max_locks_per_transaction = {max(locks, _MIN_LOCKS)}\n"
        + (
            "# A full build's default is the full edition; databases choose it one by one.\n"
            "timescaledb.license = 'apache'\n"
            if apache_default
            else ""
        )
    )


def _restart_and_check(cluster: Cluster, session: Session, path: Path) -> None:
    pg_ctl("restart postgresql", cluster, "restart")
    wait_ready("restart postgresql", cluster)
    check = "SELECT setting, sourcefile FROM pg_settings WHERE name = 'shared_preload_libraries'"
    setting, source = psql("configure postgresql", cluster.port, check)[0]
    if "timescaledb" not in setting:
        raise ServicesError(
            "configure postgresql",
            f"{source} overrides {path}: add timescaledb to shared_preload_libraries there",
        )
    session.changed(
        "postgresql configured", f"configured and restarted PostgreSQL ({path})", path=str(path)
    )


def ensure_timescaledb(cluster: Cluster, session: Session, full_source: Path | None) -> None:
    query = "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    available = psql("timescaledb", cluster.port, query)
    package = f"postgresql-{cluster.version}-timescaledb"
    if full_source is not None:
        full_edition.install(cluster, session, full_source)
    elif available:
        say(f"TimescaleDB {available[0][0]} already installed for PostgreSQL {cluster.version}")
    elif apt_candidate(session, package):
        session.apt_install("install timescaledb", [package])
    else:
        say(f"apt offers no {package} (Debian 12 has none): building Debian 13's source")
        _build(cluster, session)
    _configure(cluster, session, apache_default=full_source is not None)
