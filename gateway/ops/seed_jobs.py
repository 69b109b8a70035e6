"""Seed runs in the background: one at a time per database, their state readable on any replica.

`POST /admin/seed` (gateway/ops/seed.py) calls `SeedJobs.start`, which takes the database's
seed lock and records the run in Redis before the 202 goes out, then seeds in a task of this
gateway. The task writes the run's final state (`succeeded` with the seeder's report, or
`failed` with the error) and only then lets go of the lock, so a run whose state still says
`running` while another holds the lock (or none does) belonged to a gateway that died: `status`
reports it `failed` (`abandoned`). At shutdown `close()` cancels the runs still going; each
records `failed` (`cancelled`) and releases the lock before the Redis client closes. What a
cancelled or abandoned run wrote stays, recorded in `seed_runs`, so `DELETE /admin/seed`
removes it.

Keys, one hash tag so the scripts and the status read touch one Redis Cluster slot:
- `{ia:seed}:run:<id>`: the run as JSON (`SeedRun`), kept RUN_TTL_S after its last write.
- `{ia:seed}:lock:<host>:<port>/<database>`: the id of the run seeding that database, or
  `clear:<id>` while `DELETE /admin/seed` runs; set NX with LOCK_TTL_MS, renewed by its holder.

The lock is a Redis key rather than a PostgreSQL advisory lock because a refusal must name the
run holding it and a status read must tell a live run from an abandoned one: the key carries
the run id, is taken together with the run's record in one script and read together with it
in one MULTI, whereas an advisory lock names no holder. Its TTL, renewed while the holder
lives, frees the database within LOCK_TTL_MS of a gateway dying mid-run.

The gateway's factory calls `setup(app)` once; `POST /admin/seed` fails with a 500 naming it
if it was left out.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final, Literal, TypeVar

import msgspec
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.keys import CLOCK, DB_POOL, REDIS, SETTINGS
from schemas.settings import Settings
from seeder.generate import SeedReport, seed

__all__ = [
    "LOCK_TTL_MS",
    "RUN_TTL_S",
    "SEED_JOBS",
    "SeedBusy",
    "SeedJobs",
    "SeedParams",
    "SeedRun",
    "ShuttingDown",
    "is_run_id",
    "read_run",
    "setup",
    "status_url",
    "with_seed_lock",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Status = Literal["running", "succeeded", "failed"]

# A run's state outlives its last change (or renewal, while it runs) by a day: long enough to
# read the outcome of a run started before lunch, short enough that old runs do not pile up.
RUN_TTL_S: Final = 86_400
# A dead gateway keeps the database locked at most this long; its holder renews it every
# LOCK_RENEW_S, a margin of several renewals for a stalled event loop or a Redis blip.
LOCK_TTL_MS: Final = 60_000
LOCK_RENEW_S: Final = 15.0
# Bound on the final writes of a cancelled run, so shutdown ends even when Redis is down.
_FINAL_WRITE_S: Final = 5.0
_RUN_ID: Final = re.compile(r"[0-9a-f]{32}")
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


class SeedBusy(Exception):
    """The database's seed lock is held by `holder`: a run id, or `clear:<id>` for a clear."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.run = None if holder.startswith(_CLEAR_PREFIX) else holder
        what = f"seed run {holder}" if self.run else "DELETE /admin/seed"
        super().__init__(f"{what} is in progress on this database")


class ShuttingDown(Exception):
    """The gateway is shutting down: it starts no more runs."""

    def __init__(self) -> None:
        super().__init__("the gateway is shutting down; try again on another replica")


class _LockLost(Exception):
    """The lock expired and another took it: this holder no longer has the database."""


def is_run_id(text: str) -> bool:
    return _RUN_ID.fullmatch(text) is not None


def status_url(run: str) -> str:
    return f"/admin/seed/status?run={run}"


def _run_key(run: str) -> str:
    return f"{{ia:seed}}:run:{run}"


def _lock_key(settings: Settings) -> str:
    s = settings
    return f"{{ia:seed}}:lock:{s.timescale_host}:{s.timescale_port}/{s.timescale_database}"


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _report_json(report: SeedReport) -> dict[str, Any]:
    return {
        "users": report.users,
        "days": report.days,
        "seed": report.seed,
        "rows": report.rows,
        "seconds": round(report.seconds, 3),
    }


async def _acquire(redis: Redis, settings: Settings, owner: str, record: SeedRun | None) -> None:
    keys = [_lock_key(settings)] + ([_run_key(record.run)] if record else [])
    args: list[Any] = [owner, LOCK_TTL_MS, _encoder.encode(record) if record else b"", RUN_TTL_S]
    holder = await redis.eval(_ACQUIRE_LUA, len(keys), *keys, *args)
    if holder is not None:
        raise SeedBusy(_text(holder) or "")


async def _release(redis: Redis, settings: Settings, owner: str) -> None:
    await redis.eval(_RELEASE_LUA, 1, _lock_key(settings), owner)


async def _holding(
    redis: Redis,
    settings: Settings,
    owner: str,
    work: Awaitable[T],
    *,
    record: bool,
    renew_s: float = LOCK_RENEW_S,
) -> T:
    """`work`'s result, renewing the lock (and the run's record) meanwhile; `_LockLost` (work
    cancelled) if the lock went."""
    keys = [_lock_key(settings)] + ([_run_key(owner)] if record else [])
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
                raise _LockLost
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
    await _acquire(redis, settings, owner, None)
    try:
        return await _holding(redis, settings, owner, work(), record=False)
    finally:
        await _release(redis, settings, owner)


async def read_run(app: web.Application, run: str) -> SeedRun | None:
    """The run's state as any replica sees it; None if unknown (or older than RUN_TTL_S)."""
    async with app[REDIS].pipeline(transaction=True) as pipe:
        _ = pipe.get(_run_key(run))
        _ = pipe.get(_lock_key(app[SETTINGS]))
        raw, holder = await pipe.execute()
    if raw is None:
        return None
    record = _decoder.decode(raw)
    if record.status == "running" and _text(holder) != run:
        # Its gateway wrote no outcome and no longer renews the lock: it died mid-run.
        error = {"code": "abandoned", "message": "the gateway running it stopped before the end"}
        record = msgspec.structs.replace(record, status="failed", error=error)
    return record


class SeedJobs:
    """The seed runs this gateway started. `close()` (at shutdown) cancels those still going."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self, app: web.Application, params: SeedParams) -> SeedRun:
        """Lock the database for a new run and start it; `SeedBusy` if one holds it already."""
        self._check_open()
        redis, settings = app[REDIS], app[SETTINGS]
        record = SeedRun(
            run=uuid.uuid4().hex, status="running", params=params, started_at=app[CLOCK]()
        )
        await _acquire(redis, settings, record.run, record)
        try:
            self._check_open()  # shutdown may have begun while the lock was being taken
        except ShuttingDown:
            await _release(redis, settings, record.run)
            await redis.delete(_run_key(record.run))
            raise
        task = asyncio.create_task(self._run(app, record), name=f"seed-run-{record.run}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("seed run started", extra={"run": record.run, **msgspec.to_builtins(params)})
        return record

    def _check_open(self) -> None:
        if self._closed:
            raise ShuttingDown

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if tasks:
            log.info("seed runs cancelled at shutdown", extra={"runs": len(tasks)})

    async def _run(self, app: web.Application, record: SeedRun) -> None:
        """Seed, then record the outcome, then release the lock; never raises but on cancel."""
        redis, settings, p = app[REDIS], app[SETTINGS], record.params
        # The seeder's data ends at the start of the gateway's current hour (tests pin CLOCK).
        until = app[CLOCK]().replace(minute=0, second=0, microsecond=0)

        async def load() -> SeedReport:
            pool = await app[DB_POOL]()
            async with pool.acquire() as conn:
                return await seed(conn, users=p.users, days=p.days, seed=p.seed, until=until)

        outcome: dict[str, Any]
        try:
            report = await _holding(redis, settings, record.run, load(), record=True)
        except asyncio.CancelledError:
            log.warning("seed run cancelled", extra={"run": record.run})
            message = "the gateway shut down before the run ended"
            outcome = {"status": "failed", "error": {"code": "cancelled", "message": message}}
            await self._finish(app, record, outcome)
            raise
        except _LockLost:
            log.error("seed run lost its lock", extra={"run": record.run})
            message = "the run's lock expired and another run may have started"
            outcome = {"status": "failed", "error": {"code": "lock_lost", "message": message}}
        except Exception as e:
            log.exception("seed run failed", extra={"run": record.run})
            message = f"{type(e).__name__}: {e}"
            outcome = {"status": "failed", "error": {"code": "seed_failed", "message": message}}
        else:
            log.info("seed run succeeded", extra={"run": record.run, "rows": report.rows})
            outcome = {"status": "succeeded", "report": _report_json(report)}
        await self._finish(app, record, outcome)

    async def _finish(self, app: web.Application, record: SeedRun, outcome: dict[str, Any]) -> None:
        """The outcome first, the lock after: a `running` record without its lock means dead."""
        redis, settings = app[REDIS], app[SETTINGS]
        done = msgspec.structs.replace(record, finished_at=app[CLOCK](), **outcome)
        try:
            async with asyncio.timeout(_FINAL_WRITE_S):
                await redis.set(_run_key(record.run), _encoder.encode(done), ex=RUN_TTL_S)
                await _release(redis, settings, record.run)
        except (RedisError, TimeoutError):
            # The lock expires by itself; `read_run` then reports the run abandoned.
            log.warning("seed run outcome not recorded", extra={"run": record.run}, exc_info=True)


SEED_JOBS = web.AppKey("seed_jobs", SeedJobs)


async def _close(app: web.Application) -> None:
    await app[SEED_JOBS].close()


def setup(app: web.Application) -> None:
    """Track seed runs in `app` and cancel them in `on_shutdown`, which runs before the
    cleanup contexts close Redis and the database pool the runs use. Idempotent."""
    if SEED_JOBS in app:
        return
    app[SEED_JOBS] = SeedJobs()
    app.on_shutdown.append(_close)
