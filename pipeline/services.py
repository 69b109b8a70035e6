"""Local Redis, PostgreSQL and TimescaleDB without Docker: `analytics services up|down|status`.

For a Debian machine, as root. systemd often does not run there (containers, CI), so servers are
started directly (`redis-server`, `pg_ctlcluster`), never through `systemctl`. Only servers on
this machine are managed, and PostgreSQL only as a Debian cluster (`pg_lsclusters`).

Every step of `up` first looks whether its result is already there, so a second run changes
nothing and takes seconds. Debian 12 has no TimescaleDB package: there `up` builds the Apache
edition from Debian 13's source package against the local server (design doc, section 5).
`down` stops the PostgreSQL cluster on TIMESCALE_PORT and the Redis on REDIS_PORT, whoever
started them, and keeps their data.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from schemas.errors import ServicesError
from schemas.settings import Settings

__all__ = ["down", "status", "up"]

log = logging.getLogger(__name__)

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_WORK_DIR = Path("/var/cache/inergize-analytics/timescaledb-build")
_APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
_DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bookworm's debian-archive-keyring 2023.3+deb12u2 already holds the trixie archive keys.
_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_CONF_NAME = "95-timescaledb.conf"
# TimescaleDB's 16 background workers, PostgreSQL's own and a few parallel query workers; the
# default of 8 starves TimescaleDB's scheduler.
_MIN_WORKERS = 27
_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/inergize_analytics_test"
_EDITIONS = {"apache": "Apache 2 edition", "timescale": "Community (TSL) edition"}


@dataclass(frozen=True, slots=True)
class _Cluster:
    version: str
    name: str
    port: int
    online: bool


@dataclass(frozen=True, slots=True)
class _Target:
    """A role and a database it owns, with the extension created in it."""

    role: str
    password: str
    database: str


@dataclass(slots=True)
class _Session:
    """One `up`: what it changed, and whether apt's package lists were refreshed yet."""

    changes: list[str] = field(default_factory=list)
    apt_updated: bool = False

    def changed(self, event: str, message: str, **context: object) -> None:
        print(f"  + {message}", flush=True)
        self.changes.append(message)
        log.info(event, extra=context)

    def apt_update(self) -> None:
        # Lists of a fresh machine are often empty or stale; one refresh serves every install.
        if not self.apt_updated:
            _say("Refreshing apt package lists")
            _run("apt-get update", ["apt-get", "-q", "update"])
            self.apt_updated = True

    def apt_install(self, step: str, packages: Sequence[str]) -> None:
        missing = [p for p in packages if not _installed(p)]
        present = [p for p in packages if p not in missing]
        if present:
            _say(f"Already installed: {' '.join(present)}")
        if not missing:
            return
        self.apt_update()
        _say(f"Installing {' '.join(missing)} with apt-get")
        started = time.monotonic()
        _run(step, ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing])
        seconds = round(time.monotonic() - started, 1)
        self.changed(
            "packages installed",
            f"installed {' '.join(missing)} ({seconds:.0f} s)",
            packages=missing,
            seconds=seconds,
        )


def _say(message: str) -> None:
    print(f"  {message}", flush=True)


def _run(
    step: str, argv: Sequence[str], *, stdin: str | None = None, cwd: Path | None = None
) -> str:
    log.debug("running command", extra={"step": step, "argv": list(argv)})
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    try:
        # Arguments are lists built here, never a shell string, so nothing is interpreted.
        done = subprocess.run(  # noqa: S603
            argv, input=stdin, cwd=cwd, env=env, capture_output=True, text=True, check=True
        )
    except FileNotFoundError:
        raise ServicesError(step, f"{argv[0]} is not installed") from None
    except subprocess.CalledProcessError as e:
        tail = "\n".join((e.stderr or e.stdout or "").strip().splitlines()[-15:])
        raise ServicesError(step, f"`{shlex.join(argv)}` exited {e.returncode}:\n{tail}") from None
    return done.stdout


def _installed(package: str) -> bool:
    try:
        status = _run("dpkg-query", ["dpkg-query", "-W", "-f", "${Status}", package])
    except ServicesError:
        return False
    return status.endswith(" installed")


def _require_local(host: str, step: str) -> None:
    if host not in _LOCAL_HOSTS:
        raise ServicesError(
            step, f"{host} is not this machine; services manages local servers only"
        )


# --- Redis -------------------------------------------------------------------------------------


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        password=settings.redis_password or None,
        socket_timeout=2,
        socket_connect_timeout=2,
        # redis-py retries with backoff by default: seconds lost probing a port where nothing
        # listens, and SHUTDOWN, which drops the connection on success, would be sent again.
        retry=Retry(NoBackoff(), 0),
    )


def _redis_version(settings: Settings) -> str | None:
    """The version of the Redis answering on REDIS_HOST:REDIS_PORT, None when nothing answers."""
    try:
        with _redis(settings) as client:
            info = cast(dict[str, Any], client.info("server"))
    except redis.AuthenticationError as e:
        detail = f"the Redis on port {settings.redis_port} refuses REDIS_PASSWORD: {e}"
        raise ServicesError("redis", detail) from None
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    return str(info.get("redis_version", "unknown"))


def _ensure_redis(settings: Settings, session: _Session) -> None:
    where = f"{settings.redis_host}:{settings.redis_port}"
    version = _redis_version(settings)
    if version is not None:
        _say(f"Redis {version} already answers on {where}: reusing it")
        return
    _require_local(settings.redis_host, "redis")
    session.apt_install("install redis", ["redis-server"])
    for directory in ("/var/lib/redis", "/var/log/redis"):
        Path(directory).mkdir(parents=True, exist_ok=True)
    port = settings.redis_port
    # File names carry the port: the packaged Redis keeps dump.rdb in the same directory.
    config = [
        f"port {port}",
        "bind 127.0.0.1 -::1",
        "daemonize yes",
        "appendonly yes",
        "dir /var/lib/redis",
        f"dbfilename analytics-{port}.rdb",
        f"appenddirname analytics-{port}-aof",
        f"logfile /var/log/redis/analytics-{port}.log",
    ]
    if settings.redis_password:
        escaped = settings.redis_password.replace("\\", "\\\\").replace('"', '\\"')
        config.append(f'requirepass "{escaped}"')
    # Read from stdin (`-`) so a password never shows in the process list.
    _run("start redis", ["redis-server", "-"], stdin="\n".join(config) + "\n")
    deadline = time.monotonic() + 15
    while (version := _redis_version(settings)) is None:
        if time.monotonic() > deadline:
            raise ServicesError(
                "start redis", f"no answer; see /var/log/redis/analytics-{port}.log"
            )
        time.sleep(0.2)
    session.changed(
        "redis started", f"started Redis {version} on {where}", port=settings.redis_port
    )


# --- PostgreSQL --------------------------------------------------------------------------------


def _literal(value: str) -> str:
    # standard_conforming_strings is on (the default since 9.1): only quotes need doubling.
    return "'" + value.replace("'", "''") + "'"


def _sql(
    step: str, port: int, sql: str, database: str = "postgres", **params: str
) -> list[list[str]]:
    """Run `sql` as the superuser over the local socket, where peer auth works even on a fresh
    install. `params` become psql variables: `:'name'` quotes a value, `:"name"` an identifier."""
    argv = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-F", "\t"]
    argv += ["-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=terse", "-p", str(port), "-d", database]
    for name, value in params.items():
        argv += ["-v", f"{name}={value}"]
    out = _run(step, argv, stdin="SET client_min_messages = warning;\n" + sql, cwd=Path("/"))
    return [line.split("\t") for line in out.splitlines() if line]


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _clusters() -> list[_Cluster]:
    if shutil.which("pg_lsclusters") is None:
        return []
    found = []
    for line in _run("list postgresql clusters", ["pg_lsclusters", "--no-header"]).splitlines():
        version, name, port, state = line.split()[:4]
        found.append(_Cluster(version, name, int(port), state.startswith("online")))
    return found


def _find_cluster(settings: Settings) -> _Cluster | None:
    return next((c for c in _clusters() if c.port == settings.timescale_port), None)


def _wait_ready(step: str, cluster: _Cluster) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            _sql(step, cluster.port, "SELECT 1")
            return
        except ServicesError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _pg_ctl(step: str, cluster: _Cluster, action: str) -> None:
    argv = ["pg_ctlcluster", "--skip-systemctl-redirect", cluster.version, cluster.name, action]
    _run(step, argv)


def _new_cluster(settings: Settings, session: _Session) -> _Cluster:
    session.apt_install("install postgresql", ["postgresql"])
    cluster = _find_cluster(settings)
    if cluster is not None:
        return cluster
    if others := _clusters():
        ports = ", ".join(str(c.port) for c in others)
        raise ServicesError(
            "postgresql",
            f"no cluster on port {settings.timescale_port}; "
            f"local clusters use {ports}: set TIMESCALE_PORT to one of them",
        )
    version = max(Path("/usr/lib/postgresql").iterdir(), key=lambda p: int(p.name)).name
    argv = ["pg_createcluster", version, "main", "--port", str(settings.timescale_port)]
    _run("create postgresql cluster", argv)
    session.changed(
        "cluster created", f"created PostgreSQL cluster {version}/main", version=version
    )
    return _Cluster(version, "main", settings.timescale_port, online=False)


def _ensure_postgres(settings: Settings, session: _Session) -> _Cluster:
    _require_local(settings.timescale_host, "postgresql")
    where = f"{settings.timescale_host}:{settings.timescale_port}"
    cluster = _find_cluster(settings)
    if _answers(settings.timescale_host, settings.timescale_port):
        if cluster is None:
            raise ServicesError(
                "postgresql",
                f"a server answers on {where} but it is no local "
                "Debian cluster (pg_lsclusters); install TimescaleDB there yourself",
            )
        _say(f"PostgreSQL {cluster.version}/{cluster.name} already answers on {where}: reusing it")
        return cluster
    if cluster is None:
        cluster = _new_cluster(settings, session)
    if not cluster.online:  # the package's postinst may have started it already
        _pg_ctl("start postgresql", cluster, "start")
    _wait_ready("start postgresql", cluster)
    session.changed(
        "postgresql started",
        f"started PostgreSQL {cluster.version}/{cluster.name} on {where}",
        version=cluster.version,
        port=cluster.port,
    )
    return cluster


# --- TimescaleDB -------------------------------------------------------------------------------


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


def _apt_candidate(session: _Session, package: str) -> bool:
    session.apt_update()
    policy = _run("apt-cache policy", ["apt-cache", "policy", package])
    match = re.search(r"Candidate: (\S+)", policy)
    return match is not None and match[1] != "(none)"


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
    _say(f"Fetching Debian 13's timescaledb source package from {mirror}")
    try:
        _run("fetch timescaledb source", ["apt-get", "-q", *private, "update"])
    except ServicesError as e:
        if "NO_PUBKEY" in e.detail:
            raise ServicesError(
                e.step,
                e.detail + "\nupgrade debian-archive-keyring: releases "
                "from 2023.3+deb12u2 on carry Debian 13's keys",
            ) from None
        raise
    _run("fetch timescaledb source", ["apt-get", "-q", *private, "source", "timescaledb"], cwd=src)
    trees = [p for p in src.iterdir() if p.is_dir()]
    if len(trees) != 1:
        raise ServicesError("fetch timescaledb source", f"expected one source tree in {src}")
    return trees[0]


def _build(cluster: _Cluster, session: _Session) -> None:
    v = cluster.version
    tools = [f"postgresql-server-dev-{v}", "cmake", "build-essential", "dpkg-dev"]
    session.apt_install("install build tools", tools)
    started = time.monotonic()
    src = _WORK_DIR / "src"
    # An interrupted earlier build must not leave stale objects behind.
    shutil.rmtree(src, ignore_errors=True)
    tree = _fetch_source(src)
    _say(f"Building {tree.name} (Apache edition) against PostgreSQL {v} in {tree}")
    options = [f"-DPG_CONFIG=/usr/lib/postgresql/{v}/bin/pg_config"]
    options += (
        "-DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF "
        "-DUSE_TELEMETRY=OFF -DSEND_TELEMETRY_DEFAULT=OFF"
    ).split()
    _run("build timescaledb", ["cmake", "-S", ".", "-B", "build", *options], cwd=tree)
    jobs = str(max(2, os.cpu_count() or 2))
    _run("build timescaledb", ["make", "-C", "build", f"-j{jobs}", "install"], cwd=tree)
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


def _configure(cluster: _Cluster, session: _Session) -> None:
    query = (
        "SELECT current_setting('shared_preload_libraries'), "
        "current_setting('max_worker_processes'), current_setting('config_file')"
    )
    preload_raw, workers, config_file = _sql("configure postgresql", cluster.port, query)[0]
    preload = [lib.strip() for lib in preload_raw.split(",") if lib.strip()]
    if "timescaledb" in preload and int(workers) >= _MIN_WORKERS:
        _say(
            f"PostgreSQL already preloads timescaledb, max_worker_processes = {workers}: "
            "no restart needed"
        )
        return
    if not _includes_conf_d(Path(config_file)):
        raise ServicesError(
            "configure postgresql",
            f"{config_file} does not include_dir 'conf.d'; add that line, then run again",
        )
    path = Path(config_file).parent / "conf.d" / _CONF_NAME
    libraries = ",".join(["timescaledb", *(lib for lib in preload if lib != "timescaledb")])
    # telemetry_level is only a placeholder in our no-telemetry build; packaged builds obey it.
    path.write_text(
        "# Written by `analytics services up`: TimescaleDB must be preloaded, and its background\n"
        "# workers need more than the default 8 worker processes.\n"
        f"shared_preload_libraries = '{libraries}'\n"
        "timescaledb.telemetry_level = off\n"
        f"max_worker_processes = {max(int(workers), _MIN_WORKERS)}\n"
    )
    _say(f"Wrote {path}; restarting PostgreSQL {cluster.version}/{cluster.name} to load it")
    _pg_ctl("restart postgresql", cluster, "restart")
    _wait_ready("restart postgresql", cluster)
    check = "SELECT setting, sourcefile FROM pg_settings WHERE name = 'shared_preload_libraries'"
    setting, source = _sql("configure postgresql", cluster.port, check)[0]
    if "timescaledb" not in setting:
        raise ServicesError(
            "configure postgresql",
            f"{source} overrides {path}: add timescaledb to shared_preload_libraries there",
        )
    session.changed(
        "postgresql configured", f"configured and restarted PostgreSQL ({path})", path=str(path)
    )


def _ensure_timescaledb(cluster: _Cluster, session: _Session) -> None:
    query = "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    available = _sql("timescaledb", cluster.port, query)
    package = f"postgresql-{cluster.version}-timescaledb"
    if available:
        _say(f"TimescaleDB {available[0][0]} already installed for PostgreSQL {cluster.version}")
    elif _apt_candidate(session, package):
        session.apt_install("install timescaledb", [package])
    else:
        _say(f"apt offers no {package} (Debian 12 has none): building Debian 13's source")
        _build(cluster, session)
    _configure(cluster, session)


# --- Roles and databases -----------------------------------------------------------------------


def _targets(settings: Settings) -> list[_Target]:
    app = _Target(settings.timescale_user, settings.timescale_password, settings.timescale_database)
    # The test suite's database, on the same server, named as tests/conftest.py reads it.
    url = urlsplit(os.environ.get("TEST_DATABASE_URL", _TEST_DATABASE_URL))
    test = _Target(
        unquote(url.username or "postgres"),
        unquote(url.password or ""),
        url.path.lstrip("/") or "inergize_analytics_test",
    )
    return [app] if test.database == app.database else [app, test]


def _ensure_database(port: int, target: _Target, session: _Session) -> None:
    role, db = target.role, target.database
    query = (
        "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role'), "
        "EXISTS (SELECT FROM pg_database WHERE datname = :'db')"
    )
    found = _sql("create database", port, query, role=role, db=db)[0]
    role_exists, db_exists = (v == "t" for v in found)
    if role_exists:
        _say(f"Role {role} already exists: left as is")
    else:
        # The password goes through stdin, never a command line that `ps` shows.
        password = f" PASSWORD {_literal(target.password)}" if target.password else ""
        _sql("create role", port, f'CREATE ROLE :"role" LOGIN CREATEDB{password}', role=role)
        session.changed("role created", f"created role {role}", role=role)
    if db_exists:
        _say(f"Database {db} already exists")
    else:
        _sql("create database", port, 'CREATE DATABASE :"db" OWNER :"role"', role=role, db=db)
        session.changed("database created", f"created database {db} owned by {role}", database=db)
    query = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    if rows := _sql("create extension", port, query, db):
        _say(f"Extension timescaledb {rows[0][0]} already in {db}")
    else:
        _sql("create extension", port, "CREATE EXTENSION IF NOT EXISTS timescaledb", db)
        session.changed("extension created", f"created extension timescaledb in {db}", database=db)


# --- Commands ----------------------------------------------------------------------------------


def _report_postgres(settings: Settings, cluster: _Cluster | None) -> bool:
    where = f"{settings.timescale_host}:{settings.timescale_port}"
    if not _answers(settings.timescale_host, settings.timescale_port):
        print(f"PostgreSQL   not running on {where}")
        return False
    if cluster is None:
        print(f"PostgreSQL   answers on {where}, but is no local Debian cluster: not inspected")
        return False
    port, db = cluster.port, settings.timescale_database
    query = (
        "SELECT current_setting('server_version'), "
        "EXISTS (SELECT FROM pg_database WHERE datname = :'db'), "
        "EXISTS (SELECT FROM pg_available_extensions WHERE name = 'timescaledb')"
    )
    version, db_exists, available = _sql("status", port, query, db=db)[0]
    print(f"PostgreSQL   {version} on {where} (cluster {cluster.version}/{cluster.name})")
    if available != "t":
        print(f"TimescaleDB  not installed for PostgreSQL {cluster.version}")
        return False
    if db_exists != "t":
        print(f"TimescaleDB  installed, but database {db} does not exist")
        return False
    query = (
        "SELECT extversion, current_setting('timescaledb.license', true) "
        "FROM pg_extension WHERE extname = 'timescaledb'"
    )
    rows = _sql("status", port, query, db)
    if not rows or not rows[0][1]:
        missing = "not created in" if not rows else "not preloaded by the server for"
        print(f"TimescaleDB  extension {missing} database {db}")
        return False
    extversion, license_ = rows[0]
    edition = _EDITIONS.get(license_, license_ + " edition")
    print(f"TimescaleDB  {extversion}, {edition} (timescaledb.license = {license_}), in {db}")
    return True


def _report(settings: Settings) -> bool:
    where = f"{settings.redis_host}:{settings.redis_port}"
    redis_version = _redis_version(settings)
    print(
        f"Redis        {redis_version} on {where}"
        if redis_version
        else f"Redis        not running on {where}"
    )
    cluster = _find_cluster(settings) if settings.timescale_host in _LOCAL_HOSTS else None
    return _report_postgres(settings, cluster) and redis_version is not None


def up(settings: Settings) -> None:
    """Install what is missing, start what is stopped, create role, database and extension."""
    started = time.monotonic()
    session = _Session()
    print("Redis")
    _ensure_redis(settings, session)
    print("PostgreSQL")
    cluster = _ensure_postgres(settings, session)
    print("TimescaleDB")
    _ensure_timescaledb(cluster, session)
    print("Roles and databases")
    for target in _targets(settings):
        _ensure_database(cluster.port, target, session)
    print()
    if not _report(settings):
        raise ServicesError("services up", "a service is still not ready; see the report above")
    seconds = round(time.monotonic() - started, 1)
    summary = f"{len(session.changes)} change(s)" if session.changes else "nothing changed"
    print(f"\nServices ready in {seconds:.1f} s: {summary}.")
    log.info("services ready", extra={"seconds": seconds, "changes": session.changes})


def status(settings: Settings) -> bool:
    """Print what runs, with versions and the TimescaleDB edition; True when all is ready."""
    ready = _report(settings)
    if not ready:
        print("\nSomething is missing: `analytics services up` provides it.")
    return ready


def down(settings: Settings) -> None:
    """Stop the PostgreSQL cluster on TIMESCALE_PORT and the Redis on REDIS_PORT; data is kept."""
    _require_local(settings.timescale_host, "services down")
    _require_local(settings.redis_host, "services down")
    cluster = _find_cluster(settings)
    if cluster is not None and cluster.online:
        _pg_ctl("stop postgresql", cluster, "stop")
        print(f"Stopped PostgreSQL {cluster.version}/{cluster.name}")
        log.info("postgresql stopped", extra={"version": cluster.version, "port": cluster.port})
    else:
        print(f"PostgreSQL   no running local cluster on port {settings.timescale_port}")
    if _redis_version(settings) is None:
        print(f"Redis        not running on port {settings.redis_port}")
        return
    try:
        with _redis(settings) as client:
            client.shutdown()
    except redis.RedisError as e:
        raise ServicesError("stop redis", str(e)) from None
    print(f"Stopped Redis on port {settings.redis_port}")
    log.info("redis stopped", extra={"port": settings.redis_port})
