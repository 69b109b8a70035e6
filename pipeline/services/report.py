"""The status report `status` prints and `up` ends with: what runs, with versions and the
TimescaleDB edition."""

from __future__ import annotations

from schemas.settings import Settings

from ._system import LOCAL_HOSTS
from .postgres import Cluster, answers, find_cluster, psql
from .redis_server import redis_version

__all__ = ["report"]

_EDITIONS = {"apache": "Apache 2 edition", "timescale": "Community (TSL) edition"}


def _report_postgres(settings: Settings, cluster: Cluster | None) -> bool:
    where = f"{settings.timescale_host}:{settings.timescale_port}"
    if not answers(settings.timescale_host, settings.timescale_port):
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
    version, db_exists, available = psql("status", port, query, db=db)[0]
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
    rows = psql("status", port, query, db)
    if not rows or not rows[0][1]:
        missing = "not created in" if not rows else "not preloaded by the server for"
        print(f"TimescaleDB  extension {missing} database {db}")
        return False
    extversion, license_ = rows[0]
    edition = _EDITIONS.get(license_, license_ + " edition")
    print(f"TimescaleDB  {extversion}, {edition} (timescaledb.license = {license_}), in {db}")
    return True


def report(settings: Settings) -> bool:
    """Print one line per service; True when Redis, PostgreSQL and TimescaleDB are all ready."""
    where = f"{settings.redis_host}:{settings.redis_port}"
    version = redis_version(settings)
    print(
        f"Redis        {version} on {where}" if version else f"Redis        not running on {where}"
    )
    cluster = find_cluster(settings) if settings.timescale_host in LOCAL_HOSTS else None
    return _report_postgres(settings, cluster) and version is not None
