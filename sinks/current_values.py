"""Current metric values per user, as `schemas/metrics.py` defines them, from raw rows.

Used by the worker after each commit (for the WebSocket and alerting) and by the API's
summary, so both always report the same figures. One round trip for any number of users.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from schemas.influence import influence_score
from schemas.metrics import CURRENT_WINDOW_DAYS
from sinks.db import Conn

__all__ = ["CurrentValues", "current_values"]

CurrentValues = dict[str, dict[str, float | None]]

# Every per-user lookup below walks the unique index (user_id, time DESC, event_id).
_QUERY: Final = """
WITH users AS (SELECT unnest($1::text[]) AS user_id),
profile AS (
    SELECT p.user_id,
           sum(p.profile_views)      AS profile_views,
           sum(p.search_appearances) AS search_appearances,
           sum(p.messages_received)  AS messages_received
    FROM profile_metrics p JOIN users u USING (user_id)
    WHERE p.time > $2::timestamptz - make_interval(days => $3)
    GROUP BY p.user_id
),
engagement AS (
    SELECT e.user_id,
           sum(e.posts_published) AS posts_published,
           sum(e.impressions)     AS impressions,
           sum(e.likes)           AS likes,
           sum(e.comments)        AS comments,
           sum(e.shares)          AS shares
    FROM engagement_metrics e JOIN users u USING (user_id)
    WHERE e.time > $2::timestamptz - make_interval(days => $3)
    GROUP BY e.user_id
),
latest AS (
    SELECT u.user_id,
           (SELECT p.connections FROM profile_metrics p
             WHERE p.user_id = u.user_id AND p.connections IS NOT NULL
             ORDER BY p.time DESC LIMIT 1) AS snapshot_connections,
           (SELECT p.time FROM profile_metrics p
             WHERE p.user_id = u.user_id AND p.connections IS NOT NULL
             ORDER BY p.time DESC LIMIT 1) AS snapshot_time,
           (SELECT p.followers FROM profile_metrics p
             WHERE p.user_id = u.user_id AND p.followers IS NOT NULL
             ORDER BY p.time DESC LIMIT 1) AS followers,
           (SELECT p.profile_completeness FROM profile_metrics p
             WHERE p.user_id = u.user_id AND p.profile_completeness IS NOT NULL
             ORDER BY p.time DESC LIMIT 1) AS profile_completeness
    FROM users u
),
net AS (
    SELECT l.user_id,
           coalesce(sum(p.connections_added - p.connections_removed), 0) AS net_connections
    FROM latest l
    LEFT JOIN profile_metrics p
      ON p.user_id = l.user_id AND (l.snapshot_time IS NULL OR p.time > l.snapshot_time)
    GROUP BY l.user_id
)
SELECT l.user_id,
       coalesce(pr.profile_views, 0)      AS profile_views,
       coalesce(pr.search_appearances, 0) AS search_appearances,
       coalesce(pr.messages_received, 0)  AS messages_received,
       coalesce(e.posts_published, 0)     AS posts_published,
       coalesce(e.impressions, 0)         AS impressions,
       coalesce(e.likes, 0)               AS likes,
       coalesce(e.comments, 0)            AS comments,
       coalesce(e.shares, 0)              AS shares,
       coalesce(l.snapshot_connections, 0) + n.net_connections AS connections,
       l.followers,
       l.profile_completeness
FROM latest l
JOIN net n USING (user_id)
LEFT JOIN profile pr USING (user_id)
LEFT JOIN engagement e USING (user_id)
"""


async def current_values(conn: Conn, user_ids: Sequence[str], at: datetime) -> CurrentValues:
    """Every catalogue metric for each user in `user_ids`, with windows ending at `at`."""
    if not user_ids:
        return {}
    rows = await conn.fetch(_QUERY, list(user_ids), at, CURRENT_WINDOW_DAYS)
    out: CurrentValues = {}
    for r in rows:
        impressions = float(r["impressions"])
        interactions = float(r["likes"] + r["comments"] + r["shares"])
        rate = interactions / impressions if impressions > 0 else None
        completeness = (
            float(r["profile_completeness"]) if r["profile_completeness"] is not None else None
        )
        values: dict[str, float | None] = {
            "profileViews": float(r["profile_views"]),
            "searchAppearances": float(r["search_appearances"]),
            "messagesReceived": float(r["messages_received"]),
            "postsPublished": float(r["posts_published"]),
            "impressions": impressions,
            "likes": float(r["likes"]),
            "comments": float(r["comments"]),
            "shares": float(r["shares"]),
            "engagementRate": rate,
            "connections": float(r["connections"]),
            "followers": float(r["followers"]) if r["followers"] is not None else None,
            "profileCompleteness": completeness,
        }
        values["influenceScore"] = influence_score(
            connections=values["connections"] or 0.0,
            profile_views_7d=values["profileViews"] or 0.0,
            engagement_rate=rate or 0.0,
            profile_completeness=completeness or 0.0,
        )
        out[r["user_id"]] = values
    return out
