"""A session's coalesced metric values: what waits while its client reads too slowly, while
`updateFrequency` has not come round, or while a snapshot or replay holds live deliveries.

Per watched user, the latest value per metric replaces the queued one (the session counts the
replaced ones as dropped), and the newest entry folded in names the message: written in entry
order, stream ids keep increasing on the wire. When to fold and when to write is the session's
business (gateway/ws/session.py); this module only keeps the values.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import TypeAlias

from gateway.ws.frames import EntryKey, metrics_frame
from schemas.ws import MetricsData, MetricUpdate

__all__ = ["Pending", "PendingByUser", "discard_covered", "drop_metrics", "pending_frames"]


class Pending:
    """A user's coalesced values waiting to be sent, and the newest entry folded in."""

    __slots__ = ("as_of", "committed_ms", "entry_id", "key", "values")

    def __init__(self) -> None:
        self.values: dict[str, float | None] = {}
        self.entry_id = ""
        self.key: EntryKey = (0, 0)
        self.as_of = ""
        self.committed_ms = 0

    def fold(
        self,
        key: EntryKey,
        entry_id: str,
        updates: Iterable[MetricUpdate],
        wanted: frozenset[str],
        committed_ms: int,
    ) -> int:
        """Fold one entry's `wanted` updates in; the number of queued values they replaced."""
        replaced = 0
        for u in updates:
            if u.metric in wanted:
                if u.metric in self.values:
                    replaced += 1
                self.values[u.metric] = u.value
                self.as_of = max(self.as_of, u.as_of)
        self.entry_id, self.key = entry_id, key
        self.committed_ms = max(self.committed_ms, committed_ms)
        return replaced


PendingByUser: TypeAlias = dict[str, Pending]


def discard_covered(
    pending: PendingByUser, covered: EntryKey, users: Collection[str] | None
) -> None:
    """Drop the values of `users` (None: all) folded only from entries up to `covered`: what
    was sent during a hold already reflects them."""
    stale = [u for u, p in pending.items() if p.key <= covered and (users is None or u in users)]
    for user in stale:
        del pending[user]


def drop_metrics(pending: PendingByUser, user: str, metrics: frozenset[str] | None) -> None:
    """Drop `user`'s values waiting for `metrics` (None: all of them)."""
    if user not in pending:
        return
    if metrics is None:
        del pending[user]
    else:
        values = pending[user].values
        for m in metrics & values.keys():
            del values[m]


def pending_frames(pending: Mapping[str, Pending], now_ms: int) -> Iterator[bytes]:
    """One metrics frame per user with values, in entry order; each built as it is taken."""
    for user, p in sorted(pending.items(), key=lambda item: item[1].key):
        if not p.values:
            continue
        data = MetricsData(user, p.values, p.as_of, max(0, now_ms - p.committed_ms))
        yield metrics_frame(p.entry_id, data)
