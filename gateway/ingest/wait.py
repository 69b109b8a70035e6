"""`?wait=true`: answer once the fate of every accepted event is known.

An event's fate is one of two: its row is in `real_time_events` (committed), or a worker put
it in the dead-letter queue (what only the worker could know: the database refused its row, or
it kept crashing a stage). The gateway polls both, from one position: the DLQ's last id taken
before the events were appended, so a letter written for them is always after it.

Answers: 200 once every event is committed; 422 `dead_lettered` as soon as every event's
fate is known and some were dead-lettered (each with the letter's reason, stage and id); 504
`commit_timeout` listing the ids still in flight, which stay in flight and will be stored or
dead-lettered; 503 when TimescaleDB or Redis cannot be asked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import ApiError
from gateway.ingest.appender import AppendStatus
from gateway.keys import APPENDER, DB_POOL, REDIS
from schemas.dead_letters import letter_events, text
from schemas.events import StreamEvent
from schemas.streams import DLQ_STREAM

__all__ = ["WAIT_MAX_S", "WAIT_MIN_S", "dlq_position", "wait_for_fate"]

log = logging.getLogger(__name__)

# Below 0.1 s no commit can be confirmed (a worker batch alone takes longer), so a smaller
# timeout is a mistake, not a wish; a minute bounds how long a request holds a connection.
WAIT_MIN_S: Final = 0.1
WAIT_MAX_S: Final = 60.0
# Polling: often enough to add little latency, rarely enough to cost the DB little.
_POLL_S: Final = 0.025
_DLQ_PAGE: Final = 500
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_RETRY_AFTER: Final = {"Retry-After": "1"}

_COMMITTED_SQL: Final = """
SELECT user_id, event_id FROM real_time_events
WHERE (user_id, event_id) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND time >= $3
"""

Key = tuple[str, str]  # (user_id, event_id)


async def dlq_position(redis: Redis) -> str:
    """The DLQ's newest id now (`0-0` when empty): letters for events appended later follow."""
    newest: Any = await redis.xrevrange(DLQ_STREAM, count=1)
    return text(newest[0][0]) if newest else "0-0"


class _Letters:
    """Reads the DLQ forward from a position, keeping the letters that name waited events."""

    def __init__(self, redis: Redis, position: str) -> None:
        self._redis = redis
        self._position = position

    async def read(self, pending: dict[Key, int]) -> dict[Key, dict[str, Any]]:
        found: dict[Key, dict[str, Any]] = {}
        while True:
            rows: Any = await self._redis.xrange(
                DLQ_STREAM, min=f"({self._position}", count=_DLQ_PAGE
            )
            for entry_id, fields in rows:
                self._position = text(entry_id)
                for e in letter_events(fields):
                    key = (e.user_id or "", e.event_id or "")
                    if key in pending:
                        found[key] = {
                            "event_id": e.event_id,
                            "reason": text(fields.get(b"reason", b"")),
                            "stage": text(fields.get(b"stage", b"")),
                            "letter": self._position,
                        }
            if len(rows) < _DLQ_PAGE:
                return found


def _pending(
    events: Sequence[StreamEvent], statuses: Sequence[AppendStatus], horizon_us: int
) -> dict[Key, int]:
    """Each waited event with the earliest time its row may carry."""
    pending: dict[Key, int] = {}
    for event, status in zip(events, statuses, strict=True):
        # A duplicate whose time defaulted to this receipt was stored with its first receipt
        # time, which dedup remembered for at most `horizon_us`.
        defaulted = status == "duplicate" and event.time_us == event.received_us
        bound = event.time_us - horizon_us if defaulted else event.time_us
        key = (event.user_id, event.event_id)
        pending[key] = min(bound, pending.get(key, bound))
    return pending


async def _settle_once(
    pool: asyncpg.Pool, letters: _Letters, pending: dict[Key, int], dead: dict[Key, dict[str, Any]]
) -> None:
    """One look at both fates: committed events leave `pending`; dead-lettered ones move to
    `dead`. The database is asked first, so an event that has both (stored, then a later
    stage failed) counts as committed."""
    users, ids = zip(*pending, strict=True)
    since = _EPOCH + timedelta(microseconds=min(pending.values()))
    for row in await pool.fetch(_COMMITTED_SQL, list(users), list(ids), since):
        pending.pop((row["user_id"], row["event_id"]), None)
    if pending:
        dead.update(await letters.read(pending))
        for key in dead:
            pending.pop(key, None)


async def wait_for_fate(
    request: web.Request,
    events: Sequence[StreamEvent],
    statuses: Sequence[AppendStatus],
    wait_s: float,
    dlq_from: str,
) -> None:
    """Return once every event is committed; else ApiError 422, 504 or 503 (module doc)."""
    pending = _pending(events, statuses, int(request.app[APPENDER].remembered_s * 1e6))
    letters = _Letters(request.app[REDIS], dlq_from)
    dead: dict[Key, dict[str, Any]] = {}
    try:
        async with asyncio.timeout(wait_s):
            pool = await request.app[DB_POOL]()
            while pending:
                await _settle_once(pool, letters, pending, dead)
                if pending:
                    await asyncio.sleep(_POLL_S)
    except TimeoutError:
        raise ApiError(
            504,
            "commit_timeout",
            f"{len(pending)} events not committed within {wait_s:g} s; they remain in flight",
            extra={"pending": list(dict.fromkeys(event_id for _, event_id in pending))},
        ) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        log.warning("database unavailable", extra={"error": repr(e)})
        raise ApiError(
            503,
            "database_unavailable",
            "cannot confirm commits: TimescaleDB unreachable; the events were accepted",
            headers=_RETRY_AFTER,
        ) from e
    except RedisError as e:
        raise ApiError(
            503,
            "redis_unavailable",
            "cannot read the dead-letter queue; the events were accepted",
            headers=_RETRY_AFTER,
        ) from e
    if dead:
        first = next(iter(dead.values()))
        raise ApiError(
            422,
            "dead_lettered",
            f"{len(dead)} of the events were dead-lettered: {first['reason']}",
            extra={"deadLettered": list(dead.values())},
        )
