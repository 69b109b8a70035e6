"""Append accepted events to the partition streams: group commit and backpressure.

One awaited Redis call costs about 95 us of event-loop time, twice aiohttp's own cost per
request (docs/architecture.md, "Costs that shaped the design"), so the appender never spends
one per request:

- **Group commit.** `append()` queues a request's events and awaits a future. The queue is
  flushed ~1 ms after its first event arrives, or at once when `max_pending` events wait. One
  flush is one pipeline (`transaction=False`) of EVALSHA calls, one per partition (more if a
  partition has over `MAX_EVENTS_PER_CALL` events): one round trip for every request in it.
- **One stream entry per partition per flush**, deduplicated in the same call: the script, its
  keys and the dedup window are `append_script.py`.
- **Backpressure.** `backlog()` sums `appended - acked` over the `ia:backlog:{p}` hashes, read
  at most every `_BACKLOG_CACHE_S`; the ingest route answers 429 above INGEST_MAX_BACKLOG.

The pool's connections pack commands with hiredis (`packing.py`; re-exported here for the app).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from gateway.ingest.append_script import (
    APPEND_LUA,
    DUPLICATE,
    MAX_EVENTS_PER_CALL,
    DedupWindow,
    id_digest,
)
from schemas.events import StreamEvent, stream_event_encoder
from schemas.settings import Settings
from schemas.streams import backlog_key, partition_of

__all__ = ["AppendStatus", "Appender"]

log = logging.getLogger(__name__)

AppendStatus = Literal["accepted", "duplicate"]

# A backlog check per request would be one more round trip each; 200 ms of staleness lets at
# most that long of traffic past the limit, which the limit's headroom absorbs.
_BACKLOG_CACHE_S: Final = 0.2


@dataclass(slots=True)
class _Request:
    """One append() call waiting in the queue, its events pre-encoded per partition."""

    # partition -> (indices of its events in the request, flat id/digest/payload triples)
    parts: dict[int, tuple[list[int], list[bytes]]]
    statuses: list[AppendStatus]
    future: asyncio.Future[list[AppendStatus]]
    error: BaseException | None = None


@dataclass(slots=True)
class _Call:
    """One EVALSHA for one partition: the triples of several requests, and whose they are."""

    partition: int
    triples: list[bytes] = field(default_factory=list)
    segments: list[tuple[_Request, list[int]]] = field(default_factory=list)
    size: int = 0


class Appender:
    """Appends events for one gateway process. Create once, `close()` at shutdown."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        *,
        window_s: float = 0.001,
        max_pending: int = 2000,
        slices: int = 4,
    ) -> None:
        self._redis = redis
        self._partitions = settings.stream_partitions
        self._window_s = window_s
        self._max_pending = max_pending
        self._dedup = DedupWindow(settings.dedup_window, slices)
        self._script = redis.register_script(APPEND_LUA)
        self._queue: list[_Request] = []
        self._queued_events = 0
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._closed = False
        self._backlog = 0
        self._backlog_at = -math.inf
        self._backlog_lock = asyncio.Lock()

    @property
    def remembered_s(self) -> float:
        """The longest an id can stay in the dedup sets (a slice's TTL after its last write)."""
        return self._dedup.slice_ttl_ms / 1000

    async def append(self, events: Sequence[StreamEvent]) -> list[AppendStatus]:
        """Append `events` (in order, deduplicated); one status per event, in the same order.

        Raises what Redis raised if the flush carrying them failed; some partitions' events may
        then be in the streams already, and a retry with the same event ids reports them as
        duplicates.
        """
        if self._closed:
            raise RuntimeError("cannot append to a closed appender")
        if not events:
            return []
        # Encoding and hashing here, in the caller's task, keeps the flush short.
        parts: dict[int, tuple[list[int], list[bytes]]] = {}
        for i, event in enumerate(events):
            p = partition_of(event.user_id, self._partitions)
            part = parts.get(p)
            if part is None:
                part = parts[p] = ([], [])
            part[0].append(i)
            part[1].extend(
                (
                    event.event_id.encode(),
                    id_digest(event.user_id, event.event_id),
                    stream_event_encoder.encode(event),
                )
            )
        loop = asyncio.get_running_loop()
        request = _Request(parts, ["accepted"] * len(events), loop.create_future())
        self._queue.append(request)
        self._queued_events += len(events)
        if self._queued_events >= self._max_pending:
            self._flush_now()
        elif self._timer is None:
            self._timer = loop.call_later(self._window_s, self._flush_now)
        return await request.future

    def _flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._queue:
            return
        batch, self._queue, self._queued_events = self._queue, [], 0
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[_Request]) -> None:
        """Never raises: every outcome, error included, goes to the requests' futures."""
        started = time.perf_counter()
        try:
            await self._run(self._plan(batch))
        except Exception as e:
            log.warning("append flush failed", extra={"error": repr(e), "requests": len(batch)})
            for request in batch:
                request.error = request.error or e
        for request in batch:
            if request.future.done():  # the caller went away; its events are appended anyway
                continue
            if request.error is not None:
                request.future.set_exception(request.error)
            else:
                request.future.set_result(request.statuses)
        log.debug(
            "append flush",
            extra={"requests": len(batch), "ms": round((time.perf_counter() - started) * 1e3, 3)},
        )

    @staticmethod
    def _plan(batch: list[_Request]) -> list[_Call]:
        """Requests' events grouped into calls: per partition, in arrival order, capped."""
        calls: list[_Call] = []
        open_calls: dict[int, _Call] = {}
        for request in batch:
            for p, (indices, triples) in request.parts.items():
                start = 0
                while start < len(indices):
                    call = open_calls.get(p)
                    if call is None or call.size >= MAX_EVENTS_PER_CALL:
                        call = open_calls[p] = _Call(p)
                        calls.append(call)
                    take = min(MAX_EVENTS_PER_CALL - call.size, len(indices) - start)
                    call.triples += triples[3 * start : 3 * (start + take)]
                    call.segments.append((request, indices[start : start + take]))
                    call.size += take
                    start += take
        return calls

    async def _run(self, calls: list[_Call]) -> None:
        """EVALSHA every call in one pipeline; reload the script once if Redis lost it."""
        now = time.time()
        todo = calls
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for call in todo:
                    keys = self._dedup.keys(call.partition, now)
                    ttl_ms = self._dedup.slice_ttl_ms
                    _ = pipe.evalsha(self._script.sha, len(keys), *keys, ttl_ms, *call.triples)
                replies = await pipe.execute(raise_on_error=False)
            retry: list[_Call] = []
            for call, reply in zip(todo, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    retry.append(call)
                elif isinstance(reply, BaseException):
                    for request, _ in call.segments:
                        request.error = request.error or reply
                else:
                    self._record(call, reply)
            if not retry:
                return
            # A Redis restart or SCRIPT FLUSH forgot the script; NOSCRIPT means nothing ran.
            self._script.sha = await self._redis.script_load(APPEND_LUA)
            todo = retry

    @staticmethod
    def _record(call: _Call, flags: bytes) -> None:
        if len(flags) != call.size:
            raise RuntimeError(f"append script returned {len(flags)} flags for {call.size} events")
        offset = 0
        for request, indices in call.segments:
            mine = flags[offset : offset + len(indices)]
            offset += len(indices)
            if DUPLICATE in mine:
                for i, flag in zip(indices, mine, strict=True):
                    if flag == DUPLICATE:
                        request.statuses[i] = "duplicate"

    async def backlog(self) -> int:
        """Events appended but not yet acknowledged by the workers, over all partitions."""
        if time.monotonic() - self._backlog_at < _BACKLOG_CACHE_S:
            return self._backlog
        async with self._backlog_lock:
            # Another request may have refreshed it while this one waited for the lock.
            if time.monotonic() - self._backlog_at >= _BACKLOG_CACHE_S:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for p in range(self._partitions):
                        _ = pipe.hmget(backlog_key(p), ["appended", "acked"])
                    rows: list[list[bytes | None]] = await pipe.execute()
                self._backlog = sum(
                    max(0, int(appended or 0) - int(acked or 0)) for appended, acked in rows
                )
                self._backlog_at = time.monotonic()
        return self._backlog

    async def close(self) -> None:
        """Flush what is queued and wait for every flush in flight."""
        self._closed = True
        self._flush_now()
        while self._flushes:
            await asyncio.gather(*self._flushes)
