"""Local Redis, PostgreSQL and TimescaleDB without Docker: `analytics services up|down|status`.

For a Debian machine, as root. systemd often does not run there (containers, CI), so servers are
started directly (`redis-server`, `pg_ctlcluster`), never through `systemctl`. Only servers on
this machine are managed, and PostgreSQL only as a Debian cluster (`pg_lsclusters`).

Every step of `up` first looks whether its result is already there, so a second run changes
nothing and takes seconds. Debian 12 has no TimescaleDB package: there `up` builds the Apache
edition from Debian 13's source package against the local server (docs/architecture.md,
"The two TimescaleDB editions");
`up --timescaledb-source PATH` builds the full edition from an upstream source instead, and
`--edition timescale` makes the application's database full-edition (full_edition.py).
`down` stops the PostgreSQL cluster on TIMESCALE_PORT and the Redis on REDIS_PORT, whoever
started them, and keeps their data.

Modules: `_system` (commands, apt, what `up` prints and changes), `redis_server`, `postgres`
(clusters, psql, roles and databases), `timescaledb` (package or source build, preloading) and
`report` (the status lines).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import redis

from schemas.errors import ServicesError
from schemas.settings import Settings

from . import full_edition
from ._system import Session, require_local
from .postgres import ensure_database, ensure_postgres, find_cluster, pg_ctl, targets
from .redis_server import client, ensure_redis, redis_version
from .report import report
from .timescaledb import ensure_timescaledb

__all__ = ["down", "status", "up"]

log = logging.getLogger(__name__)


def up(settings: Settings, full_source: Path | None = None, edition: str | None = None) -> None:
    """Install what is missing, start what is stopped, create role, database and extension.
    `full_source`: build the full TimescaleDB edition from this upstream tarball or tree.
    `edition`: the TimescaleDB edition the application's database runs."""
    if edition is not None and edition not in full_edition.EDITIONS:
        raise ServicesError("services up", f"edition must be one of {full_edition.EDITIONS}")
    started = time.monotonic()
    session = Session()
    print("Redis")
    ensure_redis(settings, session)
    print("PostgreSQL")
    cluster = ensure_postgres(settings, session)
    print("TimescaleDB")
    ensure_timescaledb(cluster, session, full_source)
    print("Roles and databases")
    for target in targets(settings):
        ensure_database(cluster.port, target, session)
    if edition is not None:
        full_edition.set_database_edition(cluster, session, settings.timescale_database, edition)
    print()
    if not report(settings):
        raise ServicesError("services up", "a service is still not ready; see the report above")
    seconds = round(time.monotonic() - started, 1)
    summary = f"{len(session.changes)} change(s)" if session.changes else "nothing changed"
    print(f"\nServices ready in {seconds:.1f} s: {summary}.")
    log.info("services ready", extra={"seconds": seconds, "changes": session.changes})


def status(settings: Settings) -> bool:
    """Print what runs, with versions and the TimescaleDB edition; True when all is ready."""
    ready = report(settings)
    if not ready:
        print("\nSomething is missing: `analytics services up` provides it.")
    return ready


def down(settings: Settings) -> None:
    """Stop the PostgreSQL cluster on TIMESCALE_PORT and the Redis on REDIS_PORT; data is kept."""
    require_local(settings.timescale_host, "services down")
    require_local(settings.redis_host, "services down")
    cluster = find_cluster(settings)
    if cluster is not None and cluster.online:
        pg_ctl("stop postgresql", cluster, "stop")
        print(f"Stopped PostgreSQL {cluster.version}/{cluster.name}")
        log.info("postgresql stopped", extra={"version": cluster.version, "port": cluster.port})
    else:
        print(f"PostgreSQL   no running local cluster on port {settings.timescale_port}")
    if redis_version(settings) is None:
        print(f"Redis        not running on port {settings.redis_port}")
        return
    try:
        with client(settings) as c:
            c.shutdown()
    except redis.RedisError as e:
        raise ServicesError("stop redis", str(e)) from None
    print(f"Stopped Redis on port {settings.redis_port}")
    log.info("redis stopped", extra={"port": settings.redis_port})
