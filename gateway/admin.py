"""Admin API (role `admin`; 401 without a token, 403 for any other role).

- `POST /admin/migrate`: apply pending migrations (advisory-locked, so safe beside replicas
  starting up), answer what ran and the version reached.
- `GET /admin/dlq?after=<id>&limit=<n>`: dead letters oldest first, with reason, stage and the
  events they hold; `next` is the cursor of the following page (null on the last).
- `POST /admin/dlq/replay` `{"ids": [...]}` or `{"all": true}`: each dead letter goes back
  into its partition stream as a fresh entry in the gateway's format (fields
  `event_id -> msgpack event`), and leaves the DLQ in the same atomic step (REPLAY_LUA), so a
  dead letter is replayed at most once however often or concurrently the call is repeated.
  Replays bypass the dedup window on purpose: these events were accepted once and never stored.
  A letter whose events cannot be decoded, or whose stream is not a partition stream, stays.

On a Redis Cluster `REPLAY_LUA` spans `ia:dlq` and a partition's keys, which live on different
slots; replay there needs the DLQ moved under the partition's hash tag first.
"""

from __future__ import annotations

import re
from typing import Any, Final

import asyncpg
import msgspec
import orjson
from aiohttp import web
from redis.exceptions import RedisError

from gateway.auth import require_role
from gateway.errors import ApiError
from gateway.keys import REDIS, SETTINGS
from migrations import runner
from schemas.errors import MigrationError
from schemas.events import stream_event_decoder
from schemas.settings import Settings
from schemas.streams import DLQ_STREAM, backlog_key, events_stream, partition_of
from sinks.db import connect

__all__ = ["REPLAY_LUA", "routes"]

routes = web.RouteTableDef()

# KEYS[1] ia:dlq, KEYS[2] target stream, KEYS[3] its backlog hash.
# ARGV[1] DLQ entry id, ARGV[2] event count, ARGV[3..] field/value pairs of the new entry.
# Returns the new entry's id, or nil when the letter is gone (replayed already).
REPLAY_LUA: Final = """#!lua
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('HINCRBY', KEYS[3], 'appended', tonumber(ARGV[2]))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""
_ENTRY_ID: Final = re.compile(r"^\d{1,20}-\d{1,20}$")
_PAGE_DEFAULT: Final = 50
_PAGE_MAX: Final = 500
# One replay call handles at most this many letters, so it answers in bounded time; `more`
# tells the operator to call again.
_REPLAY_MAX: Final = 10_000
_META: Final = ("stream", "entry_id", "group", "stage", "reason", "deliveries", "failed_at_ms")


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[str] | None = None
    all: bool = False


_replay_decoder: Final = msgspec.json.Decoder(ReplayRequest)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _events(fields: dict[bytes, bytes]) -> list[tuple[str | None, bytes]]:
    """(event_id, msgpack payload) of each event a letter holds; event_id None if unknown."""
    if b"payload" in fields:
        payload = fields[b"payload"]
        try:
            return [(stream_event_decoder.decode(payload).event_id, payload)]
        except msgspec.DecodeError:
            return [(None, payload)]
    out: list[tuple[str | None, bytes]] = []
    for key, value in fields.items():
        name = _text(key)
        if name.startswith("f") and ":" in name:
            out.append((name.partition(":")[2], value))
    return out


def _describe(entry_id: str, fields: dict[bytes, bytes]) -> dict[str, Any]:
    letter: dict[str, Any] = {"id": entry_id}
    for name in _META:
        raw = fields.get(name.encode())
        value: Any = None if raw is None else _text(raw)
        if name in ("deliveries", "failed_at_ms") and value is not None:
            value = int(value) if value.isdigit() else None
        letter[name] = value
    letter["kind"] = "event" if b"payload" in fields else "entry"
    events: list[dict[str, Any]] = []
    for event_id, payload in _events(fields):
        try:
            e = stream_event_decoder.decode(payload)
            events.append({"event_id": e.event_id, "user_id": e.user_id, "type": e.type})
        except msgspec.DecodeError:
            events.append({"event_id": event_id, "user_id": None, "type": None})
    letter["events"] = events
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
    if not raw.isdigit() or not 1 <= int(raw) <= hi:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer 1..{hi}", name)
    return int(raw)


@routes.get("/admin/dlq")
async def list_dlq(request: web.Request) -> web.Response:
    require_role(request, "admin")
    limit = _int_param(request, "limit", _PAGE_DEFAULT, _PAGE_MAX)
    after = request.query.get("after")
    if after is not None and not _ENTRY_ID.match(after):
        raise ApiError(400, "invalid_parameter", "after must be a stream id such as 1-0", "after")
    redis = request.app[REDIS]
    try:
        rows: Any = await redis.xrange(
            DLQ_STREAM, min=f"({after}" if after else "-", count=limit + 1
        )
        total = await redis.xlen(DLQ_STREAM)
    except RedisError as e:
        raise ApiError(503, "redis_unavailable", "the event store is unavailable") from e
    page = rows[:limit]
    letters = [_describe(_text(entry_id), dict(fields)) for entry_id, fields in page]
    more = len(rows) > limit
    return _json({"total": total, "letters": letters, "next": letters[-1]["id"] if more else None})


def _target(settings: Settings, fields: dict[bytes, bytes]) -> tuple[int, str] | str:
    """(partition, stream) a letter goes back to, or why it cannot be replayed."""
    events = _events(fields)
    if not events or any(event_id is None for event_id, _ in events):
        return "its events cannot be decoded"
    if b"payload" in fields:
        user_id = stream_event_decoder.decode(events[0][1]).user_id
        p = partition_of(user_id, settings.stream_partitions)
        return p, events_stream(p)
    stream = _text(fields.get(b"stream", b""))
    for p in range(settings.stream_partitions):
        if events_stream(p) == stream:
            return p, stream
    return f"{stream or 'its stream'} is not a partition stream"


async def _replay_one(
    request: web.Request, entry_id: str, fields: dict[bytes, bytes]
) -> dict[str, Any]:
    target = _target(request.app[SETTINGS], fields)
    if isinstance(target, str):
        return {"id": entry_id, "status": "skipped", "reason": target}
    partition, stream = target
    events = _events(fields)
    args: list[Any] = [entry_id, len(events)]
    for event_id, payload in events:
        args += [event_id, payload]
    redis = request.app[REDIS]
    keys = [DLQ_STREAM, stream, backlog_key(partition)]
    new_id = await redis.eval(REPLAY_LUA, len(keys), *keys, *args)
    if new_id is None:
        return {"id": entry_id, "status": "not_found"}
    return {
        "id": entry_id,
        "status": "replayed",
        "stream": stream,
        "new_entry_id": _text(new_id),
        "events": len(events),
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
    rows: Any = await redis.xrange(DLQ_STREAM, max=_text(newest[0][0]), count=_REPLAY_MAX + 1)
    return [(_text(e), f) for e, f in rows[:_REPLAY_MAX]], len(rows) > _REPLAY_MAX


@routes.post("/admin/dlq/replay")
async def replay(request: web.Request) -> web.Response:
    require_role(request, "admin")
    try:
        body = _replay_decoder.decode(await request.read())
    except msgspec.DecodeError as e:
        raise ApiError(422, "invalid_body", str(e), "$") from None
    if body.all == (body.ids is not None):
        raise ApiError(422, "invalid_body", 'give either "ids" or "all": true', "$")
    bad = next((i for i in body.ids or [] if not _ENTRY_ID.match(i)), None)
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
