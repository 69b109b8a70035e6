"""The consumer-group runtime: the only code that issues stream commands on the worker side.

A `Runner` reads a group's streams with XREADGROUP in batches bounded by rows and wait time,
reclaims entries that dead replicas left pending (XAUTOCLAIM after CLAIM_IDLE_MS), hands each
batch to its `Handler`, and acknowledges only after the handler returned, i.e. after the
handler's output is durable. What can happen to a batch:

- the handler returns: its dead letters go to `ia:dlq`, then every entry is acknowledged;
- the handler raises a transient error (`Transient`, connection loss, timeouts): the batch is
  retried in memory with backoff, for as long as it takes, and its entries stay pending (their
  idle time is refreshed so other replicas do not steal them); nothing is dropped;
- the handler raises anything else: the batch is bisected until the failing entry is alone,
  and that entry goes to the DLQ with the error as its reason;
- an entry delivered more than MAX_DELIVERIES times (it crashed workers before) goes to the DLQ
  without being handed to the handler.

SIGTERM (via `stop()`): stop reading, finish the batch in hand, acknowledge, return.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import redis.asyncio as redis
from redis.exceptions import ResponseError

from pipeline import prom
from pipeline.acks import Acks
from pipeline.claims import Claims
from pipeline.dead_letters import write_dead_letters
from pipeline.deliveries import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    READ_COUNT,
    TRANSIENT_ERRORS,
    DeadLetter,
    Delivery,
    Handler,
    Transient,
    parse_reply,
)
from pipeline.trimming import trim_acknowledged
from schemas.settings import Settings

# The stages and the tests import the handler's types from here, the runtime's entry point:
# they are re-exported on purpose (their home is pipeline.deliveries).
__all__ = [
    "TRANSIENT_ERRORS",
    "DeadLetter",
    "Delivery",
    "Handler",
    "Runner",
    "Transient",
    "consumer_name",
]

log = logging.getLogger(__name__)

# XREADGROUP BLOCK must stay well under the client's socket timeout (docs/architecture.md,
# "Costs that shaped the design").
MAX_BLOCK_MS: Final = 2000
TRIM_EVERY_S: Final = 5.0


def consumer_name() -> str:
    """Unique per process, readable in XINFO: host, pid and a random suffix for pid reuse."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Runner:
    """Runs `handler` over `streams` as member `consumer` of `group`."""

    redis: redis.Redis
    settings: Settings
    group: str
    streams: Sequence[str]
    handler: Handler
    stage: str
    backlog_keys: dict[str, str] = field(default_factory=dict)  # stream -> backlog hash
    consumer: str = field(default_factory=consumer_name)
    trim: bool = True

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()
        self._acks = Acks(self.redis, self.group, self.backlog_keys)
        self._claims = Claims(
            self.redis, self.group, self.consumer, self.streams, self.settings.claim_idle_ms
        )
        self._last_trim = 0.0
        self.batches = 0
        self.entries = 0

    def stop(self) -> None:
        self._stopping.set()

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    async def run(self) -> None:
        await self.ensure_groups()
        log.info(
            "consumer started",
            extra={"group": self.group, "consumer": self.consumer, "streams": len(self.streams)},
        )
        backoff = BACKOFF_FIRST_S
        while not self._stopping.is_set():
            backoff = await self._round(backoff)
        log.info(
            "consumer stopped",
            extra={"group": self.group, "batches": self.batches, "entries": self.entries},
        )
        await self._leave_group()

    async def _round(self, backoff: float) -> float:
        """Read, process and maybe trim once; returns the backoff for the next failed round."""
        try:
            batch = await self._next_batch()
            if batch:
                await self._process(batch)
            if self.trim and time.monotonic() - self._last_trim > TRIM_EVERY_S:
                await self.trim_acknowledged()
            return BACKOFF_FIRST_S
        except ResponseError as e:
            # The stream or group was deleted under us (FLUSHDB, an operator's DEL):
            # recreate them rather than die; anything else is a bug worth surfacing.
            if not str(e).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            log.warning("stream or group vanished, recreating", extra={"error": str(e)})
            await self._sleep(backoff)
            await self.ensure_groups()
            return backoff
        except TRANSIENT_ERRORS as e:
            prom.STAGE_ERRORS.labels(self.stage, "redis").inc()
            log.warning(
                "stream read failed, retrying",
                extra={"group": self.group, "error": repr(e), "retry_in_s": backoff},
            )
            await self._sleep(backoff)
            return min(backoff * 2, BACKOFF_MAX_S)

    async def _leave_group(self) -> None:
        """Remove this consumer from the group when it owns nothing, so XINFO shows live ones."""
        try:
            async with asyncio.timeout(5):
                for stream in self.streams:
                    pending = await self.redis.xpending_range(
                        stream, self.group, min="-", max="+", count=1, consumername=self.consumer
                    )
                    if not pending:
                        await self.redis.xgroup_delconsumer(stream, self.group, self.consumer)
        except (*TRANSIENT_ERRORS, ResponseError):  # type: ignore[misc]
            log.warning("could not leave the group cleanly", extra={"group": self.group})

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            pass

    # -- reading ----------------------------------------------------------------------------

    async def _next_batch(self) -> list[Delivery]:
        batch = await self._claims.reclaim()
        if batch:
            return batch
        max_rows = self.settings.batch_max_rows
        wait_s = self.settings.batch_max_wait_ms / 1000
        rows = 0
        deadline: float | None = None
        while rows < max_rows and not self._stopping.is_set():
            if deadline is None:
                block_ms = MAX_BLOCK_MS
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                block_ms = max(1, int(remaining * 1000))
            reply = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                dict.fromkeys(self.streams, ">"),
                count=READ_COUNT,
                block=min(block_ms, MAX_BLOCK_MS),
            )
            got = parse_reply(reply, deliveries=1)
            if not got:
                if deadline is None:
                    return batch  # idle: let the caller trim and check for shutdown
                break
            batch.extend(got)
            rows += sum(d.weight for d in got)
            if deadline is None:
                deadline = time.monotonic() + wait_s
        return batch

    # -- processing -------------------------------------------------------------------------

    async def _process(self, batch: list[Delivery]) -> None:
        poison = [d for d in batch if d.deliveries > self.settings.max_deliveries]
        live = [d for d in batch if d.deliveries <= self.settings.max_deliveries]
        dead = [
            DeadLetter(d, f"delivered {d.deliveries} times (MAX_DELIVERIES)", self.stage)
            for d in poison
        ]
        started = time.perf_counter()
        if live:
            dead.extend(await self._handle_until_done(live))
        await self._dead_letter(dead)
        await self._acks.acknowledge(batch)
        prom.BATCH_SECONDS.labels(self.stage).observe(time.perf_counter() - started)
        prom.BATCH_ROWS.labels(self.stage).observe(sum(d.weight for d in batch))
        self.batches += 1
        self.entries += len(batch)

    async def _handle_until_done(self, batch: list[Delivery]) -> list[DeadLetter]:
        """Retry transient failures forever (keeping the entries ours); isolate poison."""
        backoff = BACKOFF_FIRST_S
        keepalive = asyncio.create_task(self._claims.keep(batch))
        try:
            while True:
                try:
                    return await self.handler(batch)
                except TRANSIENT_ERRORS as e:
                    prom.STAGE_ERRORS.labels(self.stage, "transient").inc()
                    delay = max(backoff, getattr(e, "retry_after", 0.0))
                    log.warning(
                        "batch failed, will retry",
                        extra={
                            "stage": self.stage,
                            "entries": len(batch),
                            "error": repr(e),
                            "retry_in_s": delay,
                        },
                    )
                    await asyncio.sleep(delay)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                except Exception as e:
                    # Awaited inside this except clause: _isolate's exc_info=True still sees `e`,
                    # and the halves' errors chain to it in the log, as they always did.
                    return await self._isolate(batch, e)
        finally:
            keepalive.cancel()

    async def _isolate(self, batch: list[Delivery], error: Exception) -> list[DeadLetter]:
        """Bisect a failing batch until the failing entry is alone, and dead-letter that one."""
        prom.STAGE_ERRORS.labels(self.stage, "poison").inc()
        if len(batch) == 1:
            log.error(
                "entry failed, dead-lettered",
                extra={"stage": self.stage, "entry": batch[0].entry_id},
                exc_info=True,
            )
            return [DeadLetter(batch[0], f"{type(error).__name__}: {error}", self.stage)]
        mid = len(batch) // 2
        left = await self._handle_until_done(batch[:mid])
        return left + await self._handle_until_done(batch[mid:])

    async def _dead_letter(self, dead: list[DeadLetter]) -> None:
        """Before acknowledging: a crash in between re-delivers, so a DLQ entry may repeat."""
        await write_dead_letters(self.redis, self.group, self.stage, dead)

    # -- trimming ---------------------------------------------------------------------------

    async def trim_acknowledged(self) -> None:
        """Remove entries every group has acknowledged; never one that is still pending."""
        self._last_trim = time.monotonic()
        await trim_acknowledged(self.redis, self.streams)
