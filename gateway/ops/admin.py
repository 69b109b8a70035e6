"""Admin API (role `admin`; 401 without a token, 403 for any other role).

- `POST /admin/migrate`: apply pending migrations (advisory-locked, so safe beside replicas
  starting up), answer what ran and the version reached.
- `GET /admin/dlq?after=<id>&limit=<n>`: dead letters oldest first, with reason, stage and the
  events they hold; `next` is the cursor of the following page (null on the last).
- `POST /admin/dlq/replay` `{"ids": [...]}` or `{"all": true}`: each dead letter goes back
  into its partition stream as a fresh entry in the gateway's format (fields
  `event_id -> msgpack event`), exactly once however often, concurrently or interrupted the
  call is repeated. A letter whose events cannot be decoded, or whose stream is not a
  partition stream, stays.

Replay is two steps, each a call on one Redis Cluster slot (`ia:dlq` and a partition's keys
hash to different slots, so no single script may touch both):
1. `REPLAY_APPEND_LUA`, on the partition's slot: unless the letter's replay mark
   (`ia:replayed:{p}:<dlq id>`) exists, XADD the events, count them into the backlog and set
   the mark, atomically; with the mark present it appends nothing.
2. `XDEL ia:dlq <id>`, on the DLQ's slot. Whoever removes the letter reports it `replayed`;
   concurrent callers that lost the race report `not_found`.
A gateway that dies between the two leaves the letter in the DLQ with its mark set: the next
replay finds the mark, appends nothing and removes the letter. The mark is keyed by DLQ id, not
event id: the dedup window would drop these events (they were accepted once, never stored),
and an event that fails again is a new letter that must be replayable again.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg
import msgspec
import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.auth import require_role
from gateway.errors import ApiError
from gateway.keys import REDIS, SETTINGS
from migrations import runner
from schemas.dead_letters import LETTER_META, letter_events, parse_stream_id, text
from schemas.errors import MigrationError
from schemas.settings import Settings
from schemas.streams import (
    DLQ_STREAM,
    backlog_key,
    events_stream,
    partition_of,
    replay_mark_key,
)
from sinks.db import connect

__all__ = ["REPLAY_APPEND_LUA", "append_letter", "routes"]

routes = web.RouteTableDef()

# KEYS[1] the letter's replay mark, KEYS[2] target stream, KEYS[3] its backlog hash: one hash
# tag, one slot. ARGV[1] mark TTL (s), ARGV[2] event count, ARGV[3..] the new entry's
# field/value pairs. Returns {entry id, 1 if appended now or 0 if marked before}.
REPLAY_APPEND_LUA: Final = """#!lua
local before = redis.call('GET', KEYS[1])
if before then return {before, 0} end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('HINCRBY', KEYS[3], 'appended', tonumber(ARGV[2]))
redis.call('SET', KEYS[1], id, 'EX', tonumber(ARGV[1]))
return {id, 1}
"""
# A retry after a crash comes within minutes or hours. Past a week, a letter whose XDEL was
# lost would be appended again, which the hypertables' unique index on event_id still absorbs
# (docs/architecture.md, "Delivery guarantees"), so the marks (a few dozen bytes per replayed
# letter) need not live forever.
_REPLAY_MARK_TTL_S: Final = 7 * 86400
_PAGE_DEFAULT: Final = 50
_U64_MAX: Final = (1 << 64) - 1
_PAGE_MAX: Final = 500
# One replay call handles at most this many letters, so it answers in bounded time; `more`
# tells the operator to call again.
_REPLAY_MAX: Final = 10_000


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[str] | None = None
    all: bool = False


_replay_decoder: Final = msgspec.json.Decoder(ReplayRequest)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _describe(entry_id: str, fields: dict[bytes, bytes]) -> dict[str, Any]:
    letter: dict[str, Any] = {"id": entry_id}
    for name in LETTER_META:
        raw = fields.get(name.encode())
        value: Any = None if raw is None else text(raw)
        if name in ("deliveries", "failed_at_ms") and value is not None:
            value = int(value) if value.isdigit() else None
        letter[name] = value
    letter["kind"] = "event" if b"payload" in fields else "entry"
    letter["events"] = [
        {"event_id": e.event_id, "user_id": e.user_id, "type": e.type}
        for e in letter_events(fields)
    ]
    return letter


@routes.post("/admin/migrate")
async def migrate(request: web.Request) -> web.Response:
    require_role(request, "admin")
    try:
        conn = await connect(request.app[SETTINGS])
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise ApiError(503, "database_unavailable", "TimescaleDB is unreachable") from e
    try:
        applied = await runner.up(conn)
        version = await runner.current_version(conn)
    except MigrationError as e:
        raise ApiError(409, "migration_failed", str(e)) from e
    finally:
        await conn.close()
    return _json(
        {"applied": [{"version": m.version, "name": m.name} for m in applied], "version": version}
    )


def _int_param(request: web.Request, name: str, default: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # ASCII digits and a bounded length before int(): `isdigit()` also accepts `²`, which
    # int() refuses, and int() of thousands of digits is slow on purpose.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 1 <= int(raw) <= hi:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer 1..{hi}", name)
    return int(raw)


@routes.get("/admin/dlq")
async def list_dlq(request: web.Request) -> web.Response:
    require_role(request, "admin")
    limit = _int_param(request, "limit", _PAGE_DEFAULT, _PAGE_MAX)
    after = request.query.get("after")
    position = None if after is None else parse_stream_id(after)
    if after is not None and position is None:
        raise ApiError(
            400,
            "invalid_parameter",
            "after must be a stream id such as 1-0 (64-bit parts)",
            "after",
        )
    redis = request.app[REDIS]
    try:
        # Nothing follows the largest id, and Redis refuses an exclusive range after it.
        last = position == (_U64_MAX, _U64_MAX)
        rows: Any = (
            []
            if last
            else await redis.xrange(DLQ_STREAM, min=f"({after}" if after else "-", count=limit + 1)
        )
        total = await redis.xlen(DLQ_STREAM)
    except RedisError as e:
        raise ApiError(503, "redis_unavailable", "the event store is unavailable") from e
    page = rows[:limit]
    letters = [_describe(text(entry_id), dict(fields)) for entry_id, fields in page]
    more = len(rows) > limit
    return _json({"total": total, "letters": letters, "next": letters[-1]["id"] if more else None})


def _target(settings: Settings, fields: dict[bytes, bytes]) -> tuple[int, str] | str:
    """(partition, stream) a letter goes back to, or why it cannot be replayed."""
    events = letter_events(fields)
    users = [e.user_id for e in events]
    if not users or None in users:
        return "its events cannot be decoded"
    if b"payload" in fields:
        p = partition_of(str(users[0]), settings.stream_partitions)
        return p, events_stream(p)
    stream = text(fields.get(b"stream", b""))
    for p in range(settings.stream_partitions):
        if events_stream(p) == stream:
            return p, stream
    return f"{stream or 'its stream'} is not a partition stream"


async def append_letter(
    redis: Redis, settings: Settings, entry_id: str, fields: dict[bytes, bytes]
) -> dict[str, Any] | str:
    """Step 1: append a letter's events to its partition unless done before; where they went
    (`stream`, `new_entry_id`, `events`, `fresh`), or why the letter cannot be replayed."""
    target = _target(settings, fields)
    if isinstance(target, str):
        return target
    partition, stream = target
    events = letter_events(fields)
    args: list[Any] = [_REPLAY_MARK_TTL_S, len(events)]
    for e in events:
        args += [e.event_id, e.payload]
    keys = [replay_mark_key(partition, entry_id), stream, backlog_key(partition)]
    new_id, fresh = await redis.eval(REPLAY_APPEND_LUA, len(keys), *keys, *args)
    return {
        "stream": stream,
        "new_entry_id": text(new_id),
        "events": len(events),
        "fresh": bool(fresh),
    }


async def _replay_one(
    request: web.Request, entry_id: str, fields: dict[bytes, bytes]
) -> dict[str, Any]:
    redis = request.app[REDIS]
    appended = await append_letter(redis, request.app[SETTINGS], entry_id, fields)
    if isinstance(appended, str):
        return {"id": entry_id, "status": "skipped", "reason": appended}
    # Step 2, on the DLQ's own slot; see the module docstring.
    if not await redis.xdel(DLQ_STREAM, entry_id):
        return {"id": entry_id, "status": "not_found"}
    return {
        "id": entry_id,
        "status": "replayed",
        "stream": appended["stream"],
        "new_entry_id": appended["new_entry_id"],
        "events": appended["events"],
    }


async def _letters(request: web.Request, body: ReplayRequest) -> tuple[list[Any], bool]:
    redis = request.app[REDIS]
    if not body.all:
        ids = list(dict.fromkeys(body.ids or []))
        async with redis.pipeline(transaction=False) as pipe:
            for i in ids:
                _ = pipe.xrange(DLQ_STREAM, min=i, max=i)
            found: list[Any] = await pipe.execute()
        return [
            (i, rows[0][1] if rows else None) for i, rows in zip(ids, found, strict=True)
        ], False
    # Only letters present now: one that fails again while we replay is not replayed twice.
    newest: Any = await redis.xrevrange(DLQ_STREAM, count=1)
    if not newest:
        return [], False
    rows: Any = await redis.xrange(DLQ_STREAM, max=text(newest[0][0]), count=_REPLAY_MAX + 1)
    return [(text(e), f) for e, f in rows[:_REPLAY_MAX]], len(rows) > _REPLAY_MAX


@routes.post("/admin/dlq/replay")
async def replay(request: web.Request) -> web.Response:
    require_role(request, "admin")
    try:
        body = _replay_decoder.decode(await request.read())
    except msgspec.DecodeError as e:
        raise ApiError(422, "invalid_body", str(e), "$") from None
    if body.all == (body.ids is not None):
        raise ApiError(422, "invalid_body", 'give either "ids" or "all": true', "$")
    bad = next((i for i in body.ids or [] if parse_stream_id(i) is None), None)
    if bad is not None:
        raise ApiError(422, "invalid_body", f"{bad!r} is not a stream id", "$.ids")
    if len(body.ids or []) > _REPLAY_MAX:
        raise ApiError(422, "invalid_body", f"at most {_REPLAY_MAX} ids per call", "$.ids")
    try:
        letters, more = await _letters(request, body)
        results = [
            {"id": i, "status": "not_found"}
            if fields is None
            else await _replay_one(request, i, dict(fields))
            for i, fields in letters
        ]
    except RedisError as e:
        raise ApiError(503, "redis_unavailable", "the event store is unavailable") from e
    replayed = sum(1 for r in results if r["status"] == "replayed")
    return _json({"replayed": replayed, "results": results, "more": more})
