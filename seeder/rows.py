"""One seeded user's rows, shaped as the tables' COPY columns (sinks/timescale.py).

Every event gets a row in `real_time_events` (the feed) and one in `profile_metrics` or
`engagement_metrics`, its value in its type's count column. Event ids are
`seed:<seed>:<user>:<n>`, which is how `clear()` tells the seeder's rows from anyone else's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import orjson

__all__ = ["UserRows"]

# The count column (0-based, after the key columns) each event type adds its value to.
_PROFILE_COUNTS: Final = {
    "profile_view": 0,
    "search_appearance": 1,
    "connection_added": 2,
    "connection_removed": 3,
    "message_received": 4,
}
_ENGAGEMENT_COUNTS: Final = {
    "post_published": 0,
    "post_impression": 1,
    "post_like": 2,
    "post_comment": 3,
    "post_share": 4,
}


class UserRows:
    """The rows of one user, per table, in the order they were generated."""

    def __init__(self, user: str, seed: int) -> None:
        self.user = user
        self.seed = seed
        self.n = 0
        self.profile: list[tuple[Any, ...]] = []
        self.engagement: list[tuple[Any, ...]] = []
        self.feed: list[tuple[Any, ...]] = []

    def _id(self) -> str:
        self.n += 1
        return f"seed:{self.seed}:{self.user}:{self.n}"

    def event(self, t: datetime, kind: str, value: float, props: dict[str, Any]) -> str:
        event_id = self._id()
        self.feed.append((t, self.user, event_id, kind, value, orjson.dumps(props).decode(), t))
        return event_id

    def profile_row(
        self, t: datetime, kind: str, value: int, score: float, **absolute: Any
    ) -> None:
        counts = [0, 0, 0, 0, 0]
        if kind in _PROFILE_COUNTS:
            counts[_PROFILE_COUNTS[kind]] = value
        event_id = self.event(t, kind, value, {k: v for k, v in absolute.items() if v is not None})
        self.profile.append(
            (
                t,
                self.user,
                event_id,
                kind,
                *counts,
                absolute.get("profile_views"),
                absolute.get("connections"),
                absolute.get("followers"),
                absolute.get("profile_completeness"),
                score,
            )
        )

    def engagement_row(self, t: datetime, kind: str, value: int, post_id: str) -> None:
        counts = [0, 0, 0, 0, 0]
        counts[_ENGAGEMENT_COUNTS[kind]] = value
        event_id = self.event(t, kind, value, {"post_id": post_id})
        self.engagement.append((t, self.user, event_id, kind, post_id, *counts))
