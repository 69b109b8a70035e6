"""PostgreSQL as a local Debian cluster (`pg_lsclusters`): find, create, start it; SQL through
psql as the superuser; the role, database and extension each target needs."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from schemas.errors import ServicesError
from schemas.settings import Settings

from ._system import Session, require_local, run, say

__all__ = [
    "Cluster",
    "Target",
    "answers",
    "ensure_database",
    "ensure_postgres",
    "find_cluster",
    "pg_ctl",
    "psql",
    "targets",
    "wait_ready",
]

_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/inergize_analytics_test"


@dataclass(frozen=True, slots=True)
class Cluster:
    version: str
    name: str
    port: int
    online: bool


@dataclass(frozen=True, slots=True)
class Target:
    """A role and a database it owns, with the extension created in it."""

    role: str
    password: str
    database: str


def _literal(value: str) -> str:
    # standard_conforming_strings is on (the default since 9.1): only quotes need doubling.
    return "'" + value.replace("'", "''") + "'"


def psql(
    step: str, port: int, sql: str, database: str = "postgres", **params: str
) -> list[list[str]]:
    """Run `sql` as the superuser over the local socket, where peer auth works even on a fresh
    install. `params` become psql variables: `:'name'` quotes a value, `:"name"` an identifier."""
    argv = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-F", "\t"]
    argv += ["-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=terse", "-p", str(port), "-d", database]
    for name, value in params.items():
        argv += ["-v", f"{name}={value}"]
    out = run(step, argv, stdin="SET client_min_messages = warning;\n" + sql, cwd=Path("/"))
    return [line.split("\t") for line in out.splitlines() if line]


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _clusters() -> list[Cluster]:
    if shutil.which("pg_lsclusters") is None:
        return []
    found = []
    for line in run("list postgresql clusters", ["pg_lsclusters", "--no-header"]).splitlines():
        version, name, port, state = line.split()[:4]
        found.append(Cluster(version, name, int(port), state.startswith("online")))
    return found


def find_cluster(settings: Settings) -> Cluster | None:
    return next((c for c in _clusters() if c.port == settings.timescale_port), None)


def wait_ready(step: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            psql(step, cluster.port, "SELECT 1")
            return
        except ServicesError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def pg_ctl(step: str, cluster: Cluster, action: str) -> None:
    argv = ["pg_ctlcluster", "--skip-systemctl-redirect", cluster.version, cluster.name, action]
    run(step, argv)


def _new_cluster(settings: Settings, session: Session) -> Cluster:
    session.apt_install("install postgresql", ["postgresql"])
    cluster = find_cluster(settings)
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
    run("create postgresql cluster", argv)
    session.changed(
        "cluster created", f"created PostgreSQL cluster {version}/main", version=version
    )
    return Cluster(version, "main", settings.timescale_port, online=False)


def ensure_postgres(settings: Settings, session: Session) -> Cluster:
    require_local(settings.timescale_host, "postgresql")
    where = f"{settings.timescale_host}:{settings.timescale_port}"
    cluster = find_cluster(settings)
    if answers(settings.timescale_host, settings.timescale_port):
        if cluster is None:
            raise ServicesError(
                "postgresql",
                f"a server answers on {where} but it is no local "
                "Debian cluster (pg_lsclusters); install TimescaleDB there yourself",
            )
        say(f"PostgreSQL {cluster.version}/{cluster.name} already answers on {where}: reusing it")
        return cluster
    if cluster is None:
        cluster = _new_cluster(settings, session)
    if not cluster.online:  # the package's postinst may have started it already
        pg_ctl("start postgresql", cluster, "start")
    wait_ready("start postgresql", cluster)
    session.changed(
        "postgresql started",
        f"started PostgreSQL {cluster.version}/{cluster.name} on {where}",
        version=cluster.version,
        port=cluster.port,
    )
    return cluster


# --- Roles and databases -----------------------------------------------------------------------


def targets(settings: Settings) -> list[Target]:
    app = Target(settings.timescale_user, settings.timescale_password, settings.timescale_database)
    # The test suite's database, on the same server, named as tests/conftest.py reads it.
    url = urlsplit(os.environ.get("TEST_DATABASE_URL", _TEST_DATABASE_URL))
    test = Target(
        unquote(url.username or "postgres"),
        unquote(url.password or ""),
        url.path.lstrip("/") or "inergize_analytics_test",
    )
    return [app] if test.database == app.database else [app, test]


def ensure_database(port: int, target: Target, session: Session) -> None:
    role, db = target.role, target.database
    query = (
        "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role'), "
        "EXISTS (SELECT FROM pg_database WHERE datname = :'db')"
    )
    found = psql("create database", port, query, role=role, db=db)[0]
    role_exists, db_exists = (v == "t" for v in found)
    if role_exists:
        say(f"Role {role} already exists: left as is")
    else:
        # The password goes through stdin, never a command line that `ps` shows.
        password = f" PASSWORD {_literal(target.password)}" if target.password else ""
        psql("create role", port, f'CREATE ROLE :"role" LOGIN CREATEDB{password}', role=role)
        session.changed("role created", f"created role {role}", role=role)
    if db_exists:
        say(f"Database {db} already exists")
    else:
        psql("create database", port, 'CREATE DATABASE :"db" OWNER :"role"', role=role, db=db)
        session.changed("database created", f"created database {db} owned by {role}", database=db)
    query = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    if rows := psql("create extension", port, query, db):
        say(f"Extension timescaledb {rows[0][0]} already in {db}")
    else:
        psql("create extension", port, "CREATE EXTENSION IF NOT EXISTS timescaledb", db)
        session.changed("extension created", f"created extension timescaledb in {db}", database=db)
