"""Missed entries for a session that sends `resume` with the last id it received.

`ia:metrics` (and `ia:alerts` for alert subscriptions) are read after `lastEventId` with XRANGE,
in pages, in id order, and a `system_notification` `resumed` closes the replay. If entries after
`lastEventId` may be gone (see `StreamBounds.lost_after`), the client gets `resync` and current
values instead: never a silent gap.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.ws.frames import alert_frame, lag_ms, metrics_frame
from gateway.ws.session import Session
from schemas.alerts import ALERT_FIELD, alert_decoder
from schemas.entries import MetricUpdate, UnreadableEntry, read_updates
from schemas.stream_ids import EntryKey, id_key
from schemas.streams import ALERTS_STREAM, METRICS_STREAM
from schemas.timefmt import epoch_ms
from schemas.ws import MetricsData

__all__ = [
    "RESUME_MAX_ENTRIES",
    "Replayed",
    "ResyncNeeded",
    "replay",
    "StreamBounds",
    "stream_bounds",
]

# A replay longer than this costs more than current values; the client gets a resync instead.
RESUME_MAX_ENTRIES: Final = 10_000
_PAGE: Final = 500
# While replaying, wait for the client to drain its socket at this pace.
_DRAIN_POLL_S: Final = 0.01
# The largest sequence number of a stream id: `(ms - 1, _MAX_SEQ)` precedes every id of `ms`.
_MAX_SEQ: Final = 2**64 - 1


@dataclass(frozen=True, slots=True)
class StreamBounds:
    """What XINFO STREAM tells about a stream's history (Redis 7)."""

    last: EntryKey  # the newest id ever generated
    first: EntryKey | None  # the oldest id still present; None when the stream is empty
    deleted: EntryKey  # the newest id removed by XDEL (trimming does not record it)
    removed: int  # entries ever added minus entries present: trimmed or deleted

    def lost_after(self, key: EntryKey) -> bool:
        """Whether some entry after `key` may have been removed, or `key` is no id of this
        stream. Trimming removes the oldest entries, so they are lost only if `key` is older
        than the oldest one left; conservative when `key`'s successors were never appended."""
        if key > self.last:
            return True
        if key == self.last or self.removed == 0:
            return False
        if self.deleted > key:
            return True
        return self.first is None or key < self.first


async def stream_bounds(redis: Redis, stream: str) -> StreamBounds | None:
    """The history of `stream`, or None if it does not exist."""
    try:
        info: dict[str, Any] = await redis.xinfo_stream(stream)
    except ResponseError:
        if await redis.exists(stream):
            raise
        return None
    length = int(info["length"])
    first = id_key(info["recorded-first-entry-id"].decode()) if length else None
    return StreamBounds(
        last=id_key(info["last-generated-id"].decode()),
        first=first,
        deleted=id_key(info["max-deleted-entry-id"].decode()),
        removed=int(info["entries-added"]) - length,
    )


class ResyncNeeded(Exception):
    """Entries after the client's id are gone (trimmed, or another stream): resync."""


@dataclass(frozen=True, slots=True)
class Replayed:
    """The newest ids a replay sent, which the live fan-out must not send again."""

    metrics: EntryKey | None
    alerts: EntryKey | None
    messages: int


async def replay(redis: Redis, session: Session, after: EntryKey, soft_bytes: int) -> Replayed:
    """Send `session` every entry after `after` for its current subscriptions, in id order.

    Alerts share the millisecond clock of metrics ids but not their sequence numbers, so alerts
    of `after`'s own millisecond are sent too: a client may see such an alert twice (dedupe by
    `alertId`), never miss it. An alert whose id equals a metrics entry's goes after it.
    Raises ResyncNeeded when the history is incomplete.
    """
    bounds = await stream_bounds(redis, METRICS_STREAM)
    if bounds is None:
        if after > (0, 0):
            raise ResyncNeeded("the metrics stream is gone")
        return Replayed(None, None, 0)
    if bounds.lost_after(after):
        raise ResyncNeeded("updates after lastEventId are no longer kept")
    alerts = await _alerts_after(redis, session, after) if session.alert_users else deque()
    sent = 0
    last_metrics: EntryKey | None = None
    last_alert: EntryKey | None = None
    start = f"({after[0]}-{after[1]}"
    count = 0
    while True:
        page: Any = await redis.xrange(METRICS_STREAM, min=start, count=_PAGE)
        for raw_id, fields in page:
            entry_id = raw_id.decode()
            key = id_key(entry_id)
            while alerts and alerts[0][0] < key:
                last_alert, frame = alerts.popleft()
                sent += session.send(frame)
            sent += sum(session.send(f) for f in _metrics_frames(session, entry_id, fields))
            last_metrics = key
        count += len(page)
        if count > RESUME_MAX_ENTRIES:
            raise ResyncNeeded("too many entries to replay")
        if len(page) < _PAGE or session.closing:
            break
        start = "(" + page[-1][0].decode()
        await _drained(session, soft_bytes)
    while alerts:
        last_alert, frame = alerts.popleft()
        sent += session.send(frame)
    return Replayed(last_metrics, last_alert, sent)


async def _alerts_after(
    redis: Redis, session: Session, after: EntryKey
) -> deque[tuple[EntryKey, bytes]]:
    bounds = await stream_bounds(redis, ALERTS_STREAM)
    if bounds is None:
        return deque()  # no alert was ever raised: nothing missed
    if after[0] > 0 and bounds.lost_after((after[0] - 1, _MAX_SEQ)):
        raise ResyncNeeded("alerts after lastEventId are no longer kept")
    raw: Any = await redis.xrange(ALERTS_STREAM, min=f"{after[0]}-0", count=RESUME_MAX_ENTRIES + 1)
    if len(raw) > RESUME_MAX_ENTRIES:
        raise ResyncNeeded("too many alerts to replay")
    out: deque[tuple[EntryKey, bytes]] = deque()
    for raw_id, fields in raw:
        try:
            alert = alert_decoder.decode(fields[ALERT_FIELD.encode()])
        except (KeyError, msgspec.DecodeError):
            continue  # counted by the live reader when it met the same entry
        if alert.user_id in session.alert_users:
            entry_id = raw_id.decode()
            out.append((id_key(entry_id), alert_frame(entry_id, alert, replay=True)))
    return out


def _metrics_frames(session: Session, entry_id: str, fields: dict[bytes, bytes]) -> list[bytes]:
    try:
        updates = read_updates(fields)
    except UnreadableEntry:
        return []  # counted by the live reader when it met the same entry
    if updates is None:
        return []
    by_user: dict[str, list[MetricUpdate]] = {}
    for u in updates:
        wanted = session.subs.get(u.user_id)
        if wanted is not None and u.metric in wanted:
            by_user.setdefault(u.user_id, []).append(u)
    frames = []
    for user, ups in by_user.items():
        lag = lag_ms(max(epoch_ms(u.committed_at) for u in ups))
        values = {u.metric: u.value for u in ups}
        data = MetricsData(user, values, max(u.as_of for u in ups), lag, replay=True)
        frames.append(metrics_frame(entry_id, data))
    return frames


async def _drained(session: Session, soft_bytes: int) -> None:
    """Wait until the client has read most of what was written (it may never: then the
    heartbeat closes it, and the replay stops)."""
    # Polled: the transport signals a drain only to aiohttp's protocol object, not to us.
    while not session.closing and session.transport.get_write_buffer_size() > soft_bytes:  # noqa: ASYNC110
        await asyncio.sleep(_DRAIN_POLL_S)
