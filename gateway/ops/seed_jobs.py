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

The lock, the records and their keys are gateway/ops/seed_lock.py; here is the runs' task
lifecycle. The gateway's factory calls `setup(app)` once; `POST /admin/seed` fails with a 500
naming it if it was left out.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any, Final

import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from gateway.keys import CLOCK, DB_POOL, REDIS, SETTINGS
from gateway.ops.seed_lock import (
    RUN_TTL_S,
    LockLost,
    SeedParams,
    SeedRun,
    acquire,
    encode_run,
    holding,
    release,
    run_key,
)
from seeder.generate import SeedReport, seed

__all__ = [
    "SEED_JOBS",
    "SeedJobs",
    "ShuttingDown",
    "is_run_id",
    "setup",
    "status_url",
]

log = logging.getLogger(__name__)

# Bound on the final writes of a cancelled run, so shutdown ends even when Redis is down.
_FINAL_WRITE_S: Final = 5.0
_RUN_ID: Final = re.compile(r"[0-9a-f]{32}")


class ShuttingDown(Exception):
    """The gateway is shutting down: it starts no more runs."""

    def __init__(self) -> None:
        super().__init__("the gateway is shutting down; try again on another replica")


def is_run_id(text: str) -> bool:
    return _RUN_ID.fullmatch(text) is not None


def status_url(run: str) -> str:
    return f"/admin/seed/status?run={run}"


def _report_json(report: SeedReport) -> dict[str, Any]:
    return {
        "users": report.users,
        "days": report.days,
        "seed": report.seed,
        "rows": report.rows,
        "seconds": round(report.seconds, 3),
    }


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
        await acquire(redis, settings, record.run, record)
        try:
            self._check_open()  # shutdown may have begun while the lock was being taken
        except ShuttingDown:
            await release(redis, settings, record.run)
            await redis.delete(run_key(record.run))
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
            report = await holding(redis, settings, record.run, load(), record=True)
        except asyncio.CancelledError:
            log.warning("seed run cancelled", extra={"run": record.run})
            message = "the gateway shut down before the run ended"
            outcome = {"status": "failed", "error": {"code": "cancelled", "message": message}}
            await self._finish(app, record, outcome)
            raise
        except LockLost:
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
                await redis.set(run_key(record.run), encode_run(done), ex=RUN_TTL_S)
                await release(redis, settings, record.run)
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
