"""`GET /api/v1/events?cursor&limit&type`: the activity feed from `real_time_events`.

Newest first (ties in event id order), `limit` 1-200 (default 50), `type` one event type or a
comma-separated list of them. Keyset pagination: `nextCursor` (null on the last page) is an
opaque token of the page's last (time, event_id); passing it as `cursor` continues right after
that event, so events stored meanwhile never shift or repeat a page the way offsets would.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from aiohttp import web

from gateway.api.common import API, cached, connection, parse_int, reader
from gateway.errors import ApiError
from gateway.keys import CLOCK
from schemas.events import EVENT_ID_PATTERN, EVENT_TYPES
from sinks.queries.series import feed_page

__all__ = ["decode_cursor", "encode_cursor", "routes"]

routes = web.RouteTableDef()

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
# A cursor names an event id as ingest accepts them; anything else (U+0000 would reach SQL)
# is not one this API issued.
_EVENT_ID: Final = re.compile(EVENT_ID_PATTERN)
_LIMIT_DEFAULT: Final = 50
_LIMIT_MAX: Final = 200


def encode_cursor(time: datetime, event_id: str) -> str:
    raw = orjson.dumps([(time - _EPOCH) // _US, event_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(token: str) -> tuple[datetime, str]:
    """(time, event_id) from a cursor this API issued; ApiError(400, field `cursor`) otherwise."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        time_us, event_id = orjson.loads(raw)
        ok_id = type(event_id) is str and len(event_id) <= 128 and _EVENT_ID.match(event_id)
        if type(time_us) is int and ok_id:
            return _EPOCH + time_us * _US, event_id
    except (binascii.Error, ValueError, TypeError, OverflowError):
        pass  # every malformed token gets the same answer below
    raise ApiError(400, "invalid_parameter", "cursor is not one this API issued", "cursor")


def _types(request: web.Request) -> list[str] | None:
    raw = request.query.get("type")
    if raw is None:
        return None
    types = sorted({t.strip() for t in raw.split(",")})
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown or not types:
        raise ApiError(
            400,
            "invalid_parameter",
            f"type must be event types from: {', '.join(sorted(EVENT_TYPES))}",
            "type",
        )
    return types


@routes.get(f"{API}/events")
async def events(request: web.Request) -> web.Response:
    _, user = reader(request)
    limit = parse_int(request, "limit", default=_LIMIT_DEFAULT, lo=1, hi=_LIMIT_MAX)
    types = _types(request)
    token = request.query.get("cursor")
    after = decode_cursor(token) if token is not None else None

    async def compute() -> dict[str, Any]:
        async with connection(request) as conn:
            rows = await feed_page(
                conn, user, after=after, types=types, limit=limit + 1, now=request.app[CLOCK]()
            )
        page = rows[:limit]
        more = len(rows) > limit
        return {
            "userId": user,
            "events": [
                {
                    "eventId": r["event_id"],
                    "type": r["event_type"],
                    "time": r["time"],
                    "value": r["value"],
                    # Stored as jsonb, sent as its JSON text: no decode and re-encode.
                    "properties": orjson.Fragment(r["properties"]),
                    "receivedAt": r["received_at"],
                }
                for r in page
            ],
            "nextCursor": encode_cursor(page[-1]["time"], page[-1]["event_id"]) if more else None,
        }

    position = "" if after is None else encode_cursor(*after)  # one key per position
    what = f"events:{limit}:{','.join(types or ())}:{position}"
    return await cached(request, user, what, compute)
