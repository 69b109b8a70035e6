"""The seed lock and the runs' records in Redis: one run (or clear) per database at a time.

Keys, one hash tag so the scripts and the status read touch one Redis Cluster slot:
- `{ia:seed}:run:<id>`: the run as JSON (`SeedRun`), kept RUN_TTL_S after its last write.
- `{ia:seed}:lock:<host>:<port>/<database>`: the id of the run seeding that database, or
  `clear:<id>` while `DELETE /admin/seed` runs; set NX with LOCK_TTL_MS, renewed by its holder.

The lock is a Redis key rather than a PostgreSQL advisory lock because a refusal must name the
run holding it and a status read must tell a live run from an abandoned one: the key carries
the run id, is taken together with the run's record in one script and read together with it
in one MULTI, whereas an advisory lock names no holder. Its TTL, renewed while the holder
lives, frees the database within LOCK_TTL_MS of a gateway dying mid-run.

A run's holder writes its outcome before it releases the lock (gateway/ops/seed_jobs.py), so a
record still `running` while the lock names another holder (or none) is a run whose gateway
died: `read_run` reports it `failed` (`abandoned`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final, Literal, TypeVar

import msgspec
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.keys import REDIS, SETTINGS
from schemas.settings import Settings

__all__ = [
    "LOCK_TTL_MS",
    "RUN_TTL_S",
    "LockLost",
    "SeedBusy",
    "SeedParams",
    "SeedRun",
    "acquire",
    "encode_run",
    "holding",
    "lock_key",
    "read_run",
    "release",
    "run_key",
    "with_seed_lock",
]

# The seed runs' log lines keep the logger they had before this module was split from
# `seed_jobs.py`: log queries and tests select on `logger == "gateway.ops.seed_jobs"`.
log = logging.getLogger("gateway.ops.seed_jobs")

T = TypeVar("T")
Status = Literal["running", "succeeded", "failed"]

# A run's state outlives its last change (or renewal, while it runs) by a day: long enough to
# read the outcome of a run started before lunch, short enough that old runs do not pile up.
RUN_TTL_S: Final = 86_400
# A dead gateway keeps the database locked at most this long; its holder renews it every
# LOCK_RENEW_S, a margin of several renewals for a stalled event loop or a Redis blip.
LOCK_TTL_MS: Final = 60_000
LOCK_RENEW_S: Final = 15.0
_CLEAR_PREFIX: Final = "clear:"

# KEYS[1] the lock, KEYS[2] (optional) the run's record. ARGV[1] owner, ARGV[2] lock TTL (ms),
# ARGV[3] record, ARGV[4] its TTL (s). Takes the lock and writes the record, or returns the
# current holder: one step, so a refusal always names a holder that was there.
_ACQUIRE_LUA: Final = """#!lua
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if KEYS[2] then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4]) end
  return false
end
return redis.call('GET', KEYS[1])
"""
# KEYS[1] the lock, KEYS[2] (optional) the run's record; ARGV[1] owner, ARGV[2] lock TTL (ms),
# ARGV[3] record TTL (s). 1 if still ours (both renewed), else 0.
_RENEW_LUA: Final = """#!lua
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if KEYS[2] then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
# KEYS[1] the lock; ARGV[1] owner. Deletes it only if ours: a lock that expired and was taken
# by another run stays theirs.
_RELEASE_LUA: Final = """#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SeedParams(msgspec.Struct, frozen=True):
    users: int
    days: int
    seed: int


class SeedRun(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """A run as stored and as `GET /admin/seed/status?run=` answers it."""

    run: str
    status: Status
    params: SeedParams
    started_at: datetime
    finished_at: datetime | None = None
    # The seeder's report, as the synchronous endpoint answered it: users, days, seed, rows
    # per table, seconds.
    report: dict[str, Any] | None = None
    # {"code", "message"}: cancelled, abandoned, lock_lost or seed_failed.
    error: dict[str, str] | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SeedRun)


def encode_run(record: SeedRun) -> bytes:
    """The record as stored under `run_key(record.run)`."""
    return _encoder.encode(record)


class SeedBusy(Exception):
    """The database's seed lock is held by `holder`: a run id, or `clear:<id>` for a clear."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.run = None if holder.startswith(_CLEAR_PREFIX) else holder
        what = f"seed run {holder}" if self.run else "DELETE /admin/seed"
        super().__init__(f"{what} is in progress on this database")


class LockLost(Exception):
    """The lock expired and another took it: this holder no longer has the database."""


def run_key(run: str) -> str:
    return f"{{ia:seed}}:run:{run}"


def lock_key(settings: Settings) -> str:
    s = settings
    return f"{{ia:seed}}:lock:{s.timescale_host}:{s.timescale_port}/{s.timescale_database}"


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def acquire(redis: Redis, settings: Settings, owner: str, record: SeedRun | None) -> None:
    keys = [lock_key(settings)] + ([run_key(record.run)] if record else [])
    args: list[Any] = [owner, LOCK_TTL_MS, encode_run(record) if record else b"", RUN_TTL_S]
    holder = await redis.eval(_ACQUIRE_LUA, len(keys), *keys, *args)
    if holder is not None:
        raise SeedBusy(_text(holder) or "")


async def release(redis: Redis, settings: Settings, owner: str) -> None:
    await redis.eval(_RELEASE_LUA, 1, lock_key(settings), owner)


async def holding(
    redis: Redis,
    settings: Settings,
    owner: str,
    work: Awaitable[T],
    *,
    record: bool,
    renew_s: float = LOCK_RENEW_S,
) -> T:
    """`work`'s result, renewing the lock (and the run's record) meanwhile; `LockLost` (work
    cancelled) if the lock went."""
    keys = [lock_key(settings)] + ([run_key(owner)] if record else [])
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=renew_s)
            if done:
                return task.result()
            try:
                renewed = await redis.eval(
                    _RENEW_LUA, len(keys), *keys, owner, LOCK_TTL_MS, RUN_TTL_S
                )
            except RedisError:
                log.warning("seed lock not renewed", extra={"owner": owner}, exc_info=True)
                continue  # the TTL leaves room for a few misses; a later renewal tells
            if not renewed:
                raise LockLost
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        if task.done() and not task.cancelled():
            _ = task.exception()  # retrieved: the caller has seen it already, or has moved on


async def with_seed_lock(app: web.Application, work: Callable[[], Awaitable[T]]) -> T:
    """`work()` while holding the database's seed lock as a clear; `SeedBusy` if a run holds it."""
    redis, settings = app[REDIS], app[SETTINGS]
    owner = f"{_CLEAR_PREFIX}{uuid.uuid4().hex}"
    await acquire(redis, settings, owner, None)
    try:
        return await holding(redis, settings, owner, work(), record=False)
    finally:
        await release(redis, settings, owner)


async def read_run(app: web.Application, run: str) -> SeedRun | None:
    """The run's state as any replica sees it; None if unknown (or older than RUN_TTL_S)."""
    async with app[REDIS].pipeline(transaction=True) as pipe:
        _ = pipe.get(run_key(run))
        _ = pipe.get(lock_key(app[SETTINGS]))
        raw, holder = await pipe.execute()
    if raw is None:
        return None
    record = _decoder.decode(raw)
    if record.status == "running" and _text(holder) != run:
        # Its gateway wrote no outcome and no longer renews the lock: it died mid-run.
        error = {"code": "abandoned", "message": "the gateway running it stopped before the end"}
        record = msgspec.structs.replace(record, status="failed", error=error)
    return record
