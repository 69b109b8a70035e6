"""The derived series: what the maintenance task stores in `metric_aggregations`.

One home for their names, periods, units and descriptions, shared by the maintenance task
(pipeline/maintenance.py, which holds the SQL), the analytics API (`/metrics/aggregations`,
`/metrics/catalog`) and the WebSocket (gateway/ws/messages.py), which may not import each other.

Each series has two names: `name`, snake_case, as stored in `metric_aggregations.metric_name`
and accepted by `GET /api/v1/metrics/aggregations?name=`; and `metric`, camelCase like the rest
of the catalogue (schemas/metrics.py), which a dashboard subscribes to over the WebSocket.
Their current value is the newest point within CURRENT_LOOKBACK; none is null.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

import msgspec

__all__ = [
    "AGGREGATIONS",
    "AGGREGATION_METRICS",
    "CURRENT_LOOKBACK",
    "UPDATES_PER_ENTRY",
    "AggregationDefinition",
]


class AggregationDefinition(msgspec.Struct, frozen=True):
    name: str
    metric: str
    period: str
    unit: str
    description: str


AGGREGATIONS: Final[dict[str, AggregationDefinition]] = {
    a.name: a
    for a in (
        AggregationDefinition(
            "engagement_rate_7d",
            "engagementRate7d",
            "7d",
            "ratio",
            "(likes + comments + shares) / impressions over the 7 days before the point, from "
            "the hourly rollup; null without impressions.",
        ),
        AggregationDefinition(
            "engagement_rate_30d",
            "engagementRate30d",
            "30d",
            "ratio",
            "(likes + comments + shares) / impressions over the 30 days before the point; null "
            "without impressions.",
        ),
        AggregationDefinition(
            "connection_growth_rate_30d",
            "connectionGrowthRate30d",
            "30d",
            "ratio",
            "Connections added minus removed over 30 days, divided by the first connection "
            "snapshot of those 30 days; null without one.",
        ),
        AggregationDefinition(
            "profile_views_wow",
            "profileViewsWeekOverWeek",
            "7d",
            "ratio",
            "Profile views of the last 7 days minus those of the 7 before, divided by the "
            "latter (0.25 = 25% more); null when the week before had none.",
        ),
        AggregationDefinition(
            "posting_cadence_30d",
            "postingCadence30d",
            "30d",
            "posts per week",
            "Posts published over the last 30 days, per week.",
        ),
    )
}

# By WebSocket name: what a dashboard may subscribe to besides the live catalogue.
AGGREGATION_METRICS: Final[dict[str, AggregationDefinition]] = {
    a.metric: a for a in AGGREGATIONS.values()
}

# The maintenance task runs at least daily (MAINTENANCE_INTERVAL is at most a day) and stamps
# its points on the hour, so a user's newest point older than this belongs to no recent run:
# the user dropped out of the series' window (e.g. no engagement for 7 days) or maintenance is
# not running. Bounding the lookup also keeps it to a few chunks instead of the whole table.
CURRENT_LOOKBACK: Final = timedelta(days=2)

# Updates per `ia:metrics` entry the maintenance task appends: a run over 10,000 users writes
# 50,000 values, which as one entry would be a multi-megabyte read for every gateway and
# consumer. 500 updates are about 60 KB, the size of a large processor batch's entry.
UPDATES_PER_ENTRY: Final = 500
