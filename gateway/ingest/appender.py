"""Append accepted events to the partition streams: dedup, group commit and backpressure.

One awaited Redis call costs about 95 us of event-loop time, twice aiohttp's own cost per
request (DESIGN.md section 8), so the appender never spends one per request:

- **Group commit.** `append()` queues a request's events and awaits a future. The queue is
  flushed ~1 ms after its first event arrives, or at once when `max_pending` events wait. One
  flush is one pipeline (`transaction=False`) of EVALSHA calls, one per partition (more if a
  partition has over `_MAX_EVENTS_PER_CALL` events): one round trip for every request in it.
- **One stream entry per partition per flush.** Its fields alternate event_id (field name) and
  the msgpack `StreamEvent` (value); workers read them pairwise.
- **Dedup in the same call.** `APPEND_LUA` drops ids seen in the dedup window, so checking
  and appending cannot race between gateway replicas.
- **Backpressure.** `backlog()` sums `appended - acked` over the `ia:backlog:{p}` hashes, read
  at most every `_BACKLOG_CACHE_S`; the ingest route answers 429 above INGEST_MAX_BACKLOG.

Dedup structure: the window (DEDUP_WINDOW seconds) is cut into `slices` sets of window/slices
seconds, `ia:dedup:{p}:<floor(now / slice_len)>`. An id is added to the current slice; a call
checks the current slice, the `slices` before it and the one after it (a replica whose clock runs
up to one slice ahead writes there). So an id is remembered for at least the window and at most
one slice longer; each slice expires (slices + 2) slice lengths after its last write, and memory
is bounded by the ids of that span. Members are 16-byte blake2b digests (`id_digest`), so an id
costs the same whatever its length (~66 bytes of Redis memory each, measured on Redis 7.0).

An event's identity is (user_id, event_id), as in the hypertables' unique index: two users'
events that share an event_id (per-user counters) are both kept, never one dropped in silence.

Every key of one call carries the partition's hash tag `{p}`, so a call stays on one Redis
Cluster slot. The script starts with `#!lua` (Redis 7+): without the `allow-oom` flag Redis refuses
it as a whole when out of memory, instead of failing half-way through.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

import hiredis
from redis.asyncio import Connection, Redis
from redis.exceptions import DataError, NoScriptError
from redis.typing import EncodableT

from schemas.events import StreamEvent, stream_event_encoder
from schemas.settings import Settings
from schemas.streams import backlog_key, dedup_key, events_stream, partition_of

__all__ = ["APPEND_LUA", "AppendStatus", "Appender", "HiredisPackingConnection", "id_digest"]

log = logging.getLogger(__name__)

AppendStatus = Literal["accepted", "duplicate"]

# KEYS[1] stream, KEYS[2] backlog hash, KEYS[3] current dedup slice (checked and written),
# KEYS[4..] the other slices of the window (checked only).
# ARGV[1] slice TTL in ms, then one triple per event: event_id, digest, msgpack payload.
# Returns one character per event: "0" appended, "1" duplicate.
# Order of writes: XADD first, so any failure after it can only make a retry append again
# (at-least-once, the database's unique index absorbs it), never lose an event as "duplicate".
# No MAXLEN on XADD: the trimmer removes only what every group acknowledged (DESIGN.md 2).
APPEND_LUA: Final = """#!lua
local n = (#ARGV - 1) / 3
local digests = {}
for i = 1, n do digests[i] = ARGV[3 * i] end
local seen = {}
for k = 3, #KEYS do
  local hits = redis.call('SMISMEMBER', KEYS[k], unpack(digests))
  for i = 1, n do
    if hits[i] == 1 then seen[i] = true end
  end
end
local flags, fields, fresh, in_call = {}, {}, {}, {}
for i = 1, n do
  local d = digests[i]
  if seen[i] or in_call[d] then
    flags[i] = '1'
  else
    in_call[d] = true
    flags[i] = '0'
    fields[#fields + 1] = ARGV[3 * i - 1]
    fields[#fields + 1] = ARGV[3 * i + 1]
    fresh[#fresh + 1] = d
  end
end
if #fresh > 0 then
  redis.call('XADD', KEYS[1], '*', unpack(fields))
  redis.call('HINCRBY', KEYS[2], 'appended', #fresh)
  redis.call('SADD', KEYS[3], unpack(fresh))
  redis.call('PEXPIRE', KEYS[3], ARGV[1])
end
return table.concat(flags)
"""

# Lua's unpack() fails past ~8000 values (LUAI_MAXCSTACK); 1000 events make 2000 XADD fields.
_MAX_EVENTS_PER_CALL: Final = 1000
# A backlog check per request would be one more round trip each; 200 ms of staleness lets at
# most that long of traffic past the limit, which the limit's headroom absorbs.
_BACKLOG_CACHE_S: Final = 0.2
_DUPLICATE: Final = ord("1")


def id_digest(user_id: str, event_id: str) -> bytes:
    """The dedup member of an event: 128 bits, so a false duplicate needs a blake2b collision
    (odds ~n^2 / 2^129; for 10^9 ids in one window about 10^-21), not just a busy window.
    user_id cannot contain NUL (its schema pattern), so the joined input is unambiguous."""
    return hashlib.blake2b(
        b"%s\0%s" % (user_id.encode(), event_id.encode()), digest_size=16
    ).digest()


class HiredisPackingConnection(Connection):
    """redis-py's asyncio connection packs commands in Python, ~1.3 us per argument, which for
    an EVALSHA of 3000 arguments is most of a flush's event-loop time; its sync connection
    already packs with hiredis (about five times faster). Same protocol bytes, same errors."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        first, rest = args[0], args[1:]
        # As redis-py does: "SCRIPT LOAD" is two protocol arguments.
        if isinstance(first, str):
            head: tuple[EncodableT, ...] = tuple(first.encode().split())
        elif isinstance(first, bytes) and b" " in first:
            head = tuple(first.split())
        else:
            head = (first,)
        packed = head + rest
        try:
            # hiredis' stub declares a 1-tuple; any length is accepted.
            return [hiredis.pack_command(cast(Any, packed))]
        except TypeError:
            pass
        # hiredis refuses bytearray, which redis-py accepts; convert only on this rare path.
        packed = tuple(bytes(a) if isinstance(a, bytearray) else a for a in packed)
        try:
            return [hiredis.pack_command(cast(Any, packed))]
        except TypeError as e:
            raise DataError(str(e)) from e


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
        self._slices = slices
        self._slice_s = settings.dedup_window / slices
        self._slice_ttl_ms = math.ceil((slices + 2) * self._slice_s * 1000)
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
        return self._slice_ttl_ms / 1000

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
                    if call is None or call.size >= _MAX_EVENTS_PER_CALL:
                        call = open_calls[p] = _Call(p)
                        calls.append(call)
                    take = min(_MAX_EVENTS_PER_CALL - call.size, len(indices) - start)
                    call.triples += triples[3 * start : 3 * (start + take)]
                    call.segments.append((request, indices[start : start + take]))
                    call.size += take
                    start += take
        return calls

    def _keys(self, partition: int, now: float) -> list[str]:
        current = int(now // self._slice_s)
        others = [current + 1, *range(current - 1, current - self._slices - 1, -1)]
        return [
            events_stream(partition),
            backlog_key(partition),
            dedup_key(partition, current),
            *(dedup_key(partition, s) for s in others),
        ]

    async def _run(self, calls: list[_Call]) -> None:
        """EVALSHA every call in one pipeline; reload the script once if Redis lost it."""
        now = time.time()
        todo = calls
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for call in todo:
                    keys = self._keys(call.partition, now)
                    _ = pipe.evalsha(
                        self._script.sha, len(keys), *keys, self._slice_ttl_ms, *call.triples
                    )
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
            if _DUPLICATE in mine:
                for i, flag in zip(indices, mine, strict=True):
                    if flag == _DUPLICATE:
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
