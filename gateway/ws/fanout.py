"""The fan-out of one gateway process: `ia:metrics` and `ia:alerts` to its WebSocket sessions.

One reader task per process (gateway/ws/reader.py) reads both streams; this module routes
each entry by user to the sessions watching that user, and encodes each distinct payload once.
Dispatch is synchronous: an entry reaches every socket of this process before the next is read,
so every session sees ids in increasing order. When the reader lost entries to trimming while
it was down, every session is told to resync.

A heartbeat sweep, one task for all sessions, pings every WS_HEARTBEAT_INTERVAL, closes a peer
that answered none of the last two pings (4408) and a session whose token expired (4401).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import msgspec
from redis.asyncio import Redis

from gateway.ws import prom as m
from gateway.ws.frames import alert_frame, error_frame, lag_ms, metrics_frame, notice_frame
from gateway.ws.reader import READ_BLOCK_MS, READ_SOCKET_TIMEOUT_S, StreamReader
from gateway.ws.session import Session, Shared, sweep
from gateway.ws.snapshots import PoolGetter, SnapshotLoader, SnapshotUnavailable, resync
from schemas.alerts import ALERT_FIELD, alert_decoder
from schemas.entries import MetricUpdate, UnreadableEntry, read_updates
from schemas.settings import Settings
from schemas.stream_ids import EntryKey, id_key
from schemas.timefmt import epoch_ms
from schemas.ws import MetricsData

# READ_BLOCK_MS and READ_SOCKET_TIMEOUT_S live with the reader (gateway/ws/reader.py);
# re-exported for gateway/ws/server.py, which opens the reader's connection.
__all__ = ["CLOSE_TIMEOUT_S", "READ_BLOCK_MS", "READ_SOCKET_TIMEOUT_S", "Fanout"]

log = logging.getLogger(__name__)

# A close handshake with a client that stopped reading ends after this; then the socket aborts.
CLOSE_TIMEOUT_S: Final = 3.0
_SENT_METRICS: Final = m.SENT.labels("metrics_update")
_SENT_ALERTS: Final = m.SENT.labels("alert_triggered")


class Fanout:
    """Sessions, who watches whom, and the supervised background tasks. One per process."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        reader: Redis,
        get_pool: PoolGetter,
        *,
        block_ms: int = READ_BLOCK_MS,
    ) -> None:
        self.settings = settings
        self.redis = redis  # the app's shared client: XRANGE / XINFO for resumes
        self._reader = StreamReader(
            reader,
            on_metrics=self.dispatch_metrics,
            on_alert=self.dispatch_alert,
            on_gap=self._resync_all,
            block_ms=block_ms,
        )
        self.shared = Shared(
            soft_bytes=settings.ws_send_queue_bytes,
            hard_bytes=2 * settings.ws_send_queue_bytes,
            close_timeout_s=CLOSE_TIMEOUT_S,
        )
        self.sessions: set[Session] = set()
        self._metric_subs: dict[str, set[Session]] = {}
        self._alert_subs: dict[str, set[Session]] = {}
        # Equal metric sets share one frozenset: 10,000 dashboards cost one set, not 10,000.
        # Names are checked against the catalogue first, so this stays small.
        self._interned: dict[frozenset[str], frozenset[str]] = {}
        self.closing = False
        self.snapshots = SnapshotLoader(get_pool, lambda: self.metrics_position)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def metrics_position(self) -> str:
        """The last `ia:metrics` id dispatched: everything up to it reached the sessions."""
        return self._reader.metrics_position

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError("the fan-out is already running")
        self._tasks = [
            asyncio.create_task(self._reader.run(), name="ws-fanout-reader"),
            asyncio.create_task(self._heartbeat(), name="ws-heartbeat"),
        ]

    async def stop(self) -> None:
        self._reader.stopping = True
        for task in self._tasks:
            # Cancelled until done: redis-py can swallow a cancellation that lands while it
            # opens a connection (redis/redis-py#2028), and the reader would read on.
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.1)
        self._tasks = []
        await self.snapshots.close()
        if self.shared.tasks:
            await asyncio.wait(self.shared.tasks)

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Tell every session why, close it with `code`, wait for the handshakes (bounded).
        New connections are refused from now on."""
        self.closing = True
        frame = notice_frame("shutdown", reason)
        count = len(self.sessions)
        for session in tuple(self.sessions):
            session.send(frame)
            session.close_soon(code, reason)
        if self.shared.tasks:
            await asyncio.wait(self.shared.tasks, timeout=CLOSE_TIMEOUT_S + 1)
        log.info("websocket sessions closed", extra={"sessions": count, "code": code})

    # --- who watches whom -----------------------------------------------------------------

    def add(self, session: Session) -> None:
        self.sessions.add(session)
        m.CONNECTIONS.inc()

    def remove(self, session: Session) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        m.CONNECTIONS.dec()
        for user in list(session.subs):
            self.unsubscribe(session, user, None)
        for user in list(session.alert_users):
            self.watch_alerts(session, user, on=False)
        session.closing = True
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None

    def subscribe(self, session: Session, user: str, metrics: frozenset[str]) -> None:
        current = session.subs.get(user)
        merged = metrics if current is None else current | metrics
        session.subs[user] = self._interned.setdefault(merged, merged)
        if current is None:
            self._metric_subs.setdefault(user, set()).add(session)
            m.SUBSCRIPTIONS.labels("metrics").inc()

    def unsubscribe(self, session: Session, user: str, metrics: frozenset[str] | None) -> None:
        """Stop `metrics` (None: all) of `user` for this session."""
        current = session.subs.get(user)
        if current is None:
            return
        left = frozenset() if metrics is None else current - metrics
        session.forget(user, metrics if left else None)
        if left:
            session.subs[user] = self._interned.setdefault(left, left)
            return
        del session.subs[user]
        _discard(self._metric_subs, user, session)
        m.SUBSCRIPTIONS.labels("metrics").dec()

    def watch_alerts(self, session: Session, user: str, *, on: bool) -> None:
        if on and user not in session.alert_users:
            session.alert_users |= {user}
            self._alert_subs.setdefault(user, set()).add(session)
            m.SUBSCRIPTIONS.labels("alerts").inc()
        elif not on and user in session.alert_users:
            session.alert_users -= {user}
            _discard(self._alert_subs, user, session)
            m.SUBSCRIPTIONS.labels("alerts").dec()

    # --- after the reader lost entries ---------------------------------------------------

    def _resync_all(self) -> None:
        log.warning(
            "fan-out missed trimmed entries; resyncing", extra={"sessions": len(self.sessions)}
        )
        for session in tuple(self.sessions):
            if session.subs:
                task = asyncio.create_task(self._resync(session))
                self.shared.tasks.add(task)
                task.add_done_callback(self.shared.tasks.discard)

    async def _resync(self, session: Session) -> None:
        try:
            await resync(self.snapshots, session, "the gateway missed entries that were trimmed")
        except SnapshotUnavailable:
            session.send(error_frame("snapshot_unavailable", "current values are unavailable"))

    # --- dispatch --------------------------------------------------------------------------

    def dispatch_metrics(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            updates = read_updates(fields)
        except UnreadableEntry as e:
            m.READER_ERRORS.labels("BadEntry").inc()
            log.warning("unreadable metrics entry", extra={"id": entry_id, "error": repr(e)})
            return
        if updates is None:
            m.READER_ERRORS.labels("UnknownEntryVersion").inc()
            return
        by_user: dict[str, list[MetricUpdate]] = {}
        for u in updates:
            if u.user_id in self._metric_subs:
                by_user.setdefault(u.user_id, []).append(u)
        if not by_user:
            return
        key = id_key(entry_id)
        sent = 0
        for user, ups in by_user.items():
            sent += self._dispatch_user(entry_id, key, user, ups)
        _SENT_METRICS.inc(sent)
        m.FANOUT_SECONDS.observe(max(0.0, time.time() - key[0] / 1000))

    def _dispatch_user(
        self, entry_id: str, key: EntryKey, user: str, ups: list[MetricUpdate]
    ) -> int:
        changed = frozenset(u.metric for u in ups)
        as_of = max(u.as_of for u in ups)
        committed = max(epoch_ms(u.committed_at) for u in ups)
        lag = lag_ms(committed)
        frames: dict[frozenset[str], bytes] = {}

        def frame(wanted: frozenset[str]) -> bytes:
            """One encoding per distinct metric set, shared by every socket that wants it."""
            out = frames.get(wanted)
            if out is None:
                values = {u.metric: u.value for u in ups if u.metric in wanted}
                out = frames[wanted] = metrics_frame(
                    entry_id, MetricsData(user, values, as_of, lag)
                )
            return out

        sent = 0
        for session in tuple(self._metric_subs.get(user, ())):
            subs = session.subs.get(user)
            if subs is None:
                continue
            wanted = changed if changed <= subs else changed & subs
            if wanted and session.offer_metrics(user, key, entry_id, ups, wanted, committed, frame):
                sent += 1
        return sent

    def dispatch_alert(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            alert = alert_decoder.decode(fields[ALERT_FIELD.encode()])
        except (KeyError, msgspec.DecodeError) as e:
            m.READER_ERRORS.labels("BadEntry").inc()
            log.warning("unreadable alert entry", extra={"id": entry_id, "error": repr(e)})
            return
        watchers = self._alert_subs.get(alert.user_id)
        if not watchers:
            return
        key = id_key(entry_id)
        frame = alert_frame(entry_id, alert, replay=False)
        _SENT_ALERTS.inc(sum(s.offer_alert(key, frame) for s in tuple(watchers)))
        m.FANOUT_SECONDS.observe(max(0.0, time.time() - key[0] / 1000))

    # --- heartbeat ------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.settings.ws_heartbeat_interval / 1000
        previous = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                sweep(tuple(self.sessions), previous, self.shared.soft_bytes)
            except Exception:  # a bug here must not stop every later heartbeat
                m.READER_ERRORS.labels("HeartbeatError").inc()
                log.exception("heartbeat sweep failed")
            previous = time.monotonic()


def _discard(index: dict[str, set[Session]], user: str, session: Session) -> None:
    watchers = index.get(user)
    if watchers is not None:
        watchers.discard(session)
        if not watchers:
            del index[user]
