"""Redis on REDIS_HOST:REDIS_PORT: probe it, or install and start `redis-server` directly."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from schemas.errors import ServicesError
from schemas.settings import Settings

from ._system import Session, require_local, run, say

__all__ = ["client", "ensure_redis", "redis_version"]


def client(settings: Settings) -> redis.Redis:
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


def redis_version(settings: Settings) -> str | None:
    """The version of the Redis answering on REDIS_HOST:REDIS_PORT, None when nothing answers."""
    try:
        with client(settings) as c:
            info = cast(dict[str, Any], c.info("server"))
    except redis.AuthenticationError as e:
        detail = f"the Redis on port {settings.redis_port} refuses REDIS_PASSWORD: {e}"
        raise ServicesError("redis", detail) from None
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    return str(info.get("redis_version", "unknown"))


def ensure_redis(settings: Settings, session: Session) -> None:
    where = f"{settings.redis_host}:{settings.redis_port}"
    version = redis_version(settings)
    if version is not None:
        say(f"Redis {version} already answers on {where}: reusing it")
        return
    require_local(settings.redis_host, "redis")
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
    run("start redis", ["redis-server", "-"], stdin="\n".join(config) + "\n")
    deadline = time.monotonic() + 15
    while (version := redis_version(settings)) is None:
        if time.monotonic() > deadline:
            raise ServicesError(
                "start redis", f"no answer; see /var/log/redis/analytics-{port}.log"
            )
        time.sleep(0.2)
    session.changed(
        "redis started", f"started Redis {version} on {where}", port=settings.redis_port
    )
