"""Current values for sessions, from TimescaleDB, on subscribe and on resync.

They come through `current_values`, the same definition the worker publishes, and for the
derived series through `aggregation_values` (each one's newest point in metric_aggregations),
the values the maintenance task compares with before it announces a change. Requests arriving
while a query runs are answered by the next query, for all their users at once, so a
reconnection storm of 10,000 dashboards costs a few queries, not 10,000. A snapshot's `id` is
the last `ia:metrics` entry the fan-out had dispatched before the query: the worker appends an
entry only after its commit, so everything up to that id is reflected in the values, and a
later `resume` from it misses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import asyncpg

from gateway.ws.frames import metrics_frame, notice_frame
from gateway.ws.prom import SENT
from gateway.ws.session import Session
from schemas.stream_ids import EntryKey, id_key
from schemas.timefmt import iso_ms
from schemas.ws import MetricsData
from sinks.queries.aggregation_values import aggregation_values
from sinks.queries.current_values import CurrentValues, current_values

__all__ = [
    "PoolGetter",
    "Snapshot",
    "SnapshotLoader",
    "SnapshotUnavailable",
    "resync",
    "send_snapshot",
]

log = logging.getLogger(__name__)

# Users per query: one round trip stays in tens of milliseconds.
_BATCH_USERS: Final = 500
_QUERY_TIMEOUT_S: Final = 10.0
_SENT_METRICS: Final = SENT.labels("metrics_update")

PoolGetter = Callable[[], Awaitable[asyncpg.Pool]]


class SnapshotUnavailable(Exception):
    """TimescaleDB could not answer; the subscription stands, live updates still flow."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    entry_id: str
    at: datetime
    values: CurrentValues

    def frame(self, user: str, metrics: frozenset[str]) -> bytes:
        current = self.values.get(user, {})
        values = {name: current.get(name) for name in sorted(metrics)}
        as_of = iso_ms(self.at)
        lag = max(0, int((time.time() - self.at.timestamp()) * 1000))
        return metrics_frame(self.entry_id, MetricsData(user, values, as_of, lag, snapshot=True))


class SnapshotLoader:
    """Batches concurrent requests for current values into one query per round."""

    def __init__(self, get_pool: PoolGetter, position: Callable[[], str]) -> None:
        self._get_pool = get_pool
        self._position = position
        self._queue: deque[tuple[Sequence[str], asyncio.Future[Snapshot]]] = deque()
        self._task: asyncio.Task[None] | None = None

    async def load(self, users: Sequence[str]) -> Snapshot:
        future: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        self._queue.append((users, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ws-snapshots")
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue:
            _, future = self._queue.popleft()
            future.cancel()

    async def _run(self) -> None:
        try:
            while self._queue:
                batch: list[asyncio.Future[Snapshot]] = []
                users: set[str] = set()
                while self._queue and len(users) < _BATCH_USERS:
                    wanted, future = self._queue.popleft()
                    batch.append(future)
                    users.update(wanted)
                outcome: Snapshot | BaseException
                try:
                    outcome = await self._query(sorted(users))
                except Exception as e:  # every waiter learns, whatever the driver raised
                    log.warning("snapshot query failed", extra={"error": repr(e)})
                    outcome = SnapshotUnavailable("current values are unavailable")
                for future in batch:
                    if future.done():
                        continue  # its session went away meanwhile
                    if isinstance(outcome, Snapshot):
                        future.set_result(outcome)
                    else:
                        future.set_exception(outcome)
        finally:
            self._task = None

    async def _query(self, users: list[str]) -> Snapshot:
        entry_id = self._position()  # before the query: see the module docstring
        at = datetime.now(UTC)
        async with asyncio.timeout(_QUERY_TIMEOUT_S):
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                values = await current_values(conn, users, at)
                derived = await aggregation_values(conn, users, at)
        for user, series in derived.items():
            values.setdefault(user, {}).update(series)
        return Snapshot(entry_id, at, values)


async def send_snapshot(
    loader: SnapshotLoader, session: Session, wanted: dict[str, frozenset[str]]
) -> None:
    """Current values of `wanted` (user -> metrics), sent at once. Live updates are held
    meanwhile so that an older snapshot never overtakes them; raises SnapshotUnavailable."""
    if not wanted:
        return
    session.begin_hold()
    covered: EntryKey | None = None
    try:
        snapshot = await loader.load(sorted(wanted))
        covered = id_key(snapshot.entry_id)
        sent = sum(session.send(snapshot.frame(u, names)) for u, names in wanted.items())
        _SENT_METRICS.inc(sent)
        session.next_due = time.monotonic() + session.frequency
    finally:
        session.end_hold(covered, wanted.keys())


async def resync(loader: SnapshotLoader, session: Session, reason: str) -> None:
    """Tell the session it missed entries (`resync`), then send current values of all it
    watches: after this its state is whole again."""
    session.send(notice_frame("resync", reason))
    await send_snapshot(loader, session, dict(session.subs))
