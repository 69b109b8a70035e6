"""The metric catalogue: every name a dashboard may subscribe to, with its definition.

One definition serves the WebSocket updates (computed by the worker after each commit) and the
API's summary, so the two can never disagree. Windows are relative to the moment of
computation. `sources` lists the event types whose arrival changes the metric; the worker
publishes a metric for a user only when a stored batch held one of them.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["CATALOGUE", "CURRENT_WINDOW_DAYS", "MetricDefinition", "metrics_changed_by"]

# Dashboards show "the last 7 days" for every windowed figure.
CURRENT_WINDOW_DAYS: Final = 7


class MetricDefinition(msgspec.Struct, frozen=True):
    name: str
    unit: str
    description: str
    window: str
    sources: tuple[str, ...]


_PROFILE_SNAPSHOT = ("profile_snapshot",)

CATALOGUE: Final[dict[str, MetricDefinition]] = {
    m.name: m
    for m in (
        MetricDefinition(
            "profileViews", "views", "Profile views in the last 7 days.", "7d", ("profile_view",)
        ),
        MetricDefinition(
            "searchAppearances",
            "appearances",
            "Appearances in LinkedIn search results in the last 7 days.",
            "7d",
            ("search_appearance",),
        ),
        MetricDefinition(
            "connections",
            "connections",
            "Connection count: the latest snapshot plus connections added minus removed since "
            "it (without a snapshot: added minus removed, all time).",
            "latest",
            ("connection_added", "connection_removed", *_PROFILE_SNAPSHOT),
        ),
        MetricDefinition(
            "followers",
            "followers",
            "Follower count from the latest snapshot.",
            "latest",
            _PROFILE_SNAPSHOT,
        ),
        MetricDefinition(
            "profileCompleteness",
            "percent",
            "Profile completeness (0-100) from the latest snapshot or profile update.",
            "latest",
            ("profile_update", *_PROFILE_SNAPSHOT),
        ),
        MetricDefinition(
            "postsPublished",
            "posts",
            "Posts published in the last 7 days.",
            "7d",
            ("post_published",),
        ),
        MetricDefinition(
            "impressions",
            "impressions",
            "Post impressions in the last 7 days.",
            "7d",
            ("post_impression",),
        ),
        MetricDefinition(
            "likes", "likes", "Likes on posts in the last 7 days.", "7d", ("post_like",)
        ),
        MetricDefinition(
            "comments", "comments", "Comments on posts in the last 7 days.", "7d", ("post_comment",)
        ),
        MetricDefinition(
            "shares", "shares", "Shares of posts in the last 7 days.", "7d", ("post_share",)
        ),
        MetricDefinition(
            "engagementRate",
            "ratio",
            "(likes + comments + shares) / impressions over the last 7 days; null without "
            "impressions.",
            "7d",
            ("post_impression", "post_like", "post_comment", "post_share"),
        ),
        MetricDefinition(
            "messagesReceived",
            "messages",
            "Messages received in the last 7 days.",
            "7d",
            ("message_received",),
        ),
        MetricDefinition(
            "influenceScore",
            "score",
            "Influence score 0-100 from connections, profile views, engagement rate and profile "
            "completeness; see docs/influence.md.",
            "latest",
            (
                "profile_view",
                "connection_added",
                "connection_removed",
                "profile_update",
                "profile_snapshot",
                "post_impression",
                "post_like",
                "post_comment",
                "post_share",
            ),
        ),
    )
}

_BY_TYPE: Final[dict[str, frozenset[str]]] = {}
for _m in CATALOGUE.values():
    for _t in _m.sources:
        _BY_TYPE[_t] = _BY_TYPE.get(_t, frozenset()) | {_m.name}


def metrics_changed_by(event_type: str) -> frozenset[str]:
    return _BY_TYPE.get(event_type, frozenset())
