"""One WebSocket connection's outgoing side: every write, its bound, and the coalescing.

**Why frames are written to the transport directly.** A server frame is unmasked, and we
negotiate no compression, so one update's frame is the same bytes for every subscriber: the
fan-out builds it once and each socket costs one `transport.write` (a `send()` syscall, or an
append to the transport's buffer). aiohttp's `send_str` would re-frame the payload and cost a
coroutine per socket, which is what makes a 10,000-socket broadcast take 150+ ms there.
aiohttp writes its own frames (pong, close) whole and synchronously, so frames never interleave.

**The send queue** is the transport's write buffer, in bytes. Below `soft` a message is written
at once. Above it the client is reading too slowly: metric values are coalesced in `pending`
(the latest value per metric replaces the queued one, and the replaced one counts as dropped),
and a timer retries until the buffer drains. Messages that must not be lost (alerts, replies)
are still written up to `hard`; past that the client cannot be served and is closed with 1013.
The same `pending` serves `updateFrequency` (a period per connection) and the hold during a
snapshot or replay, so one mechanism keeps every message in stream-id order. The values it
keeps, and how they fold, are gateway/ws/pending.py; here is when they are written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from gateway.ws.frames import PING_FRAME, EntryKey
from gateway.ws.pending import Pending, PendingByUser, discard_covered, drop_metrics, pending_frames
from gateway.ws.prom import CLOSED, DROPPED, SENT
from schemas.ws import MetricUpdate

if TYPE_CHECKING:  # gateway.auth imports gateway.keys, which imports this module's users
    from gateway.auth import Principal

__all__ = ["Session", "Shared", "sweep"]

log = logging.getLogger(__name__)

# How often a backlogged connection retries; a reader this slow is seconds behind anyway.
_DRAIN_POLL_S: Final = 0.05
_SENT_METRICS: Final = SENT.labels("metrics_update")
_DROPS: Final = {r: DROPPED.labels(r) for r in ("backpressure", "frequency", "hold")}


@dataclass(slots=True)
class Shared:
    """What every session of one fan-out shares: limits, and the tasks closing sockets."""

    soft_bytes: int
    hard_bytes: int
    close_timeout_s: float
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class Session:
    """The server's side of one socket. `subs` maps each watched user to its metric names."""

    __slots__ = (
        "alert_users",
        "closing",
        "expires_at",
        "floor_alerts",
        "floor_metrics",
        "frequency",
        "held",
        "hold",
        "last_seen",
        "missed",
        "next_due",
        "pending",
        "principal",
        "shared",
        "strikes",
        "subs",
        "timer",
        "transport",
        "window_count",
        "window_start",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        principal: Principal,
        expires_at: float,
        shared: Shared,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.principal = principal
        self.expires_at = expires_at
        self.shared = shared
        self.subs: dict[str, frozenset[str]] = {}
        self.alert_users: frozenset[str] = frozenset()  # the empty one is shared: no cost
        self.frequency = 0.0
        self.next_due = 0.0
        self.pending: PendingByUser | None = None
        self.held: list[tuple[EntryKey, bytes]] | None = None
        self.hold = 0
        # Entries up to these ids were sent by a replay; the live fan-out skips them.
        self.floor_metrics: EntryKey | None = None
        self.floor_alerts: EntryKey | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.last_seen = time.monotonic()
        self.missed = 0  # consecutive heartbeat sweeps without a frame from the peer
        self.strikes = 0
        self.window_start = 0.0
        self.window_count = 0

    # --- writing -------------------------------------------------------------------------

    def send(self, frame: bytes) -> bool:
        """Write a message that must not be dropped; closes the session (1013) if the client
        is `hard` bytes behind. False if it was not written."""
        if self.closing or self.transport.is_closing():
            return False
        if self.transport.get_write_buffer_size() > self.shared.hard_bytes:
            log.warning("websocket client too slow", extra={"user": self.principal.subject})
            self.close_soon(1013, "send queue overflow: reading too slowly")
            return False
        self.transport.write(frame)
        return True

    def offer_metrics(
        self,
        user: str,
        key: EntryKey,
        entry_id: str,
        updates: Iterable[MetricUpdate],
        wanted: frozenset[str],
        committed_ms: int,
        frame: Callable[[frozenset[str]], bytes],
    ) -> bool:
        """Deliver one entry's updates for `user`; True if written now, False if coalesced."""
        if self.closing:
            return False
        if self.floor_metrics is not None and key <= self.floor_metrics:
            return False
        if self.pending is None and not self.hold:
            now = time.monotonic()
            over = self.transport.get_write_buffer_size() > self.shared.soft_bytes
            if not over and (not self.frequency or now >= self.next_due):
                if self.transport.is_closing():
                    return False
                self.transport.write(frame(wanted))
                self.next_due = now + self.frequency
                return True
        self._coalesce(user, key, entry_id, updates, wanted, committed_ms)
        return False

    def offer_alert(self, key: EntryKey, frame: bytes) -> bool:
        """Alerts are never coalesced nor delayed by `updateFrequency`; values waiting in
        `pending` go out first so that ids keep increasing on the wire."""
        if self.floor_alerts is not None and key <= self.floor_alerts:
            return False
        if self.hold:
            if self.held is None:
                self.held = []
            self.held.append((key, frame))
            return False
        if self.pending:
            self._write_pending()
        return self.send(frame)

    def _coalesce(
        self,
        user: str,
        key: EntryKey,
        entry_id: str,
        updates: Iterable[MetricUpdate],
        wanted: frozenset[str],
        committed_ms: int,
    ) -> None:
        if self.pending is None:
            self.pending = {}
        p = self.pending.get(user)
        if p is None:
            p = self.pending[user] = Pending()
        replaced = p.fold(key, entry_id, updates, wanted, committed_ms)
        if replaced:
            reason = "hold" if self.hold else "frequency" if self.frequency else "backpressure"
            _DROPS[reason].inc(replaced)
        self._arm()

    def _arm(self) -> None:
        """Schedule the next flush of `pending`: at the period's end or the next drain poll."""
        if self.hold or self.timer is not None or self.closing:
            return
        delay = max(_DRAIN_POLL_S, self.next_due - time.monotonic())
        self.timer = asyncio.get_running_loop().call_later(delay, self.flush)

    def flush(self) -> None:
        """Send what `pending` holds if the period is over and the client keeps up."""
        self.timer = None
        if self.closing or self.hold or not self.pending:
            return
        now = time.monotonic()
        over = self.transport.get_write_buffer_size() > self.shared.soft_bytes
        if over or now < self.next_due:
            self._arm()
            return
        self._write_pending()
        self.next_due = now + self.frequency

    def _write_pending(self) -> None:
        pending, self.pending = self.pending or {}, None
        for frame in pending_frames(pending, int(time.time() * 1000)):
            if self.send(frame):
                _SENT_METRICS.inc()

    # --- holds, used while a snapshot or a replay is being sent ----------------------------

    def begin_hold(self) -> None:
        """Coalesce live deliveries until `end_hold`, so they cannot overtake the snapshot."""
        self.hold += 1

    def end_hold(
        self, covered: EntryKey | None = None, users: Collection[str] | None = None
    ) -> None:
        """Release live deliveries. Values of `users` (None: all) folded only from entries up
        to `covered` are already reflected in what was sent meanwhile, and are discarded."""
        self.hold -= 1
        if covered is not None and self.pending:
            discard_covered(self.pending, covered, users)
        if self.hold:
            return
        held, self.held = self.held or [], None
        for key, frame in held:
            self.offer_alert(key, frame)
        if self.pending:
            self.flush()

    def forget(self, user: str, metrics: frozenset[str] | None) -> None:
        """Drop values waiting for metrics the client just unsubscribed from."""
        if self.pending:
            drop_metrics(self.pending, user, metrics)

    # --- closing --------------------------------------------------------------------------

    def close_soon(self, code: int, reason: str) -> None:
        """Close from outside the connection's handler (fan-out, sweeps, shutdown)."""
        if self.closing:
            return
        self.closing = True
        task = asyncio.create_task(self._close(code, reason))
        self.shared.tasks.add(task)
        task.add_done_callback(self.shared.tasks.discard)

    async def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        await self._close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.ws.closed:
            return
        CLOSED.labels(str(code)).inc()
        try:
            # Not drained: a client that stopped reading must not hold its close forever.
            async with asyncio.timeout(self.shared.close_timeout_s):
                await self.ws.close(code=code, message=reason.encode()[:120], drain=False)
        except TimeoutError:
            self.transport.abort()


def sweep(sessions: Iterable[Session], previous: float, soft_bytes: int) -> None:
    """One heartbeat round: close sessions whose token expired (4401) or whose peer sent
    nothing since the last two pings (4408); ping the others. `previous` is when the last
    pings went out, so a session heard from since is alive."""
    now = time.time()
    for s in sessions:
        if s.closing:
            continue
        silent = s.last_seen < previous
        if now > s.expires_at:
            s.close_soon(4401, "token expired")
        elif silent and s.missed >= 1:
            s.close_soon(4408, "heartbeat timeout: no answer to two pings")
        else:
            s.missed = s.missed + 1 if silent else 0
            transport = s.transport
            if not transport.is_closing() and transport.get_write_buffer_size() <= soft_bytes:
                transport.write(PING_FRAME)
