"""Metric series, the catalogue and the derived aggregations.

- `GET /api/v1/metrics/profile?from&to&bucket=5m|1h|1d` and
  `GET /api/v1/metrics/engagement?from&to&bucket=1h|1d`: one point per bucket with events
  (empty buckets are left out), oldest first, with totals. Buckets are UTC-aligned and every
  bucket overlapping [from, to) is returned whole; the answer's `from`/`to` are the aligned
  range. Defaults: `to` now, `from` 7 days earlier (2 days for 5m), `bucket` 1h.
- `GET /api/v1/metrics/catalog`: `metrics`, the live metrics the WebSocket and the goals
  accept; `aggregations`, the derived series (schemas/aggregations.py): `name` for
  `/metrics/aggregations`, `metric` for a WebSocket `subscribe`.
- `GET /api/v1/metrics/aggregations?name&from&to`: `metric_aggregations` rows (hourly points
  computed by the maintenance task), the range widened to whole hours; default the last 7 days.

Where the points come from: buckets that start before `raw_from` = the bucket holding
(now - ROLLUP_MARGIN) are read from the rollup of that width (engagement by day: the hourly
rollup summed per day); that bucket and later ones are aggregated from the raw rows. So an event
stored a moment ago counts at once, on either TimescaleDB edition, even before the rollup group
(Apache) or the refresh policy and real-time aggregation (full edition) have caught up, and a
query of 90 days still reads at most one bucket plus ROLLUP_MARGIN of raw rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg
from aiohttp import web

from gateway.api.common import (
    API,
    align_down,
    cached,
    connection,
    json_response,
    reader,
    time_range,
)
from gateway.errors import ApiError
from gateway.keys import CLOCK
from schemas.aggregations import AGGREGATIONS
from schemas.metrics import CATALOGUE
from schemas.tables import ENGAGEMENT_COUNTS, EVENTS, PROFILE_COUNTS, PROFILE_LATEST, camel
from sinks.queries.series import (
    PROFILE_ROLLUPS,
    ROLLUP_MARGIN,
    aggregation_rows,
    engagement_series,
    profile_series,
)

__all__ = ["SeriesRange", "profile_points", "routes"]

routes = web.RouteTableDef()

_DEFAULT_SPAN: Final = timedelta(days=7)
# The longest range per bucket width: bounded points per answer (576, 2160, 1096).
_MAX_SPAN: Final[dict[str, timedelta]] = {
    "5m": timedelta(days=2),
    "1h": timedelta(days=90),
    "1d": timedelta(days=3 * 365 + 1),
}
_ENGAGEMENT_WIDTHS: Final = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}
_PROFILE_WIDTHS: Final = {name: width for name, (_, width) in PROFILE_ROLLUPS.items()}

_AGGREGATION_MAX_SPAN: Final = timedelta(days=90)

# (JSON name, rollup column): a point's sums, then the figures it keeps the latest of.
_PROFILE_SUMS: Final = tuple((camel(c), c) for c in (*PROFILE_COUNTS, EVENTS))
_PROFILE_LATEST: Final = tuple((camel(c), c) for c in PROFILE_LATEST)
_ENGAGEMENT_SUMS: Final = tuple((camel(c), c) for c in ENGAGEMENT_COUNTS)

_CATALOG: Final = {
    "metrics": [
        {"name": m.name, "unit": m.unit, "description": m.description, "window": m.window}
        for m in CATALOGUE.values()
    ],
    "aggregations": [
        {
            "name": a.name,
            "metric": a.metric,
            "period": a.period,
            "unit": a.unit,
            "description": a.description,
        }
        for a in AGGREGATIONS.values()
    ],
}


@dataclass(frozen=True, slots=True)
class SeriesRange:
    bucket: str
    width: timedelta
    start: datetime  # aligned, inclusive
    end: datetime  # aligned, exclusive
    raw_from: datetime

    @property
    def key(self) -> str:
        """The cache key part: aligned bounds, so every `to` inside one bucket shares it."""
        return f"{self.bucket}:{self.start.timestamp():.0f}:{self.end.timestamp():.0f}"


def series_range(request: web.Request, widths: Mapping[str, timedelta]) -> SeriesRange:
    bucket = request.query.get("bucket", "1h")
    if bucket not in widths:
        raise ApiError(
            400, "invalid_parameter", f"bucket must be one of {', '.join(widths)}", "bucket"
        )
    now = request.app[CLOCK]()
    width = widths[bucket]
    start, end = time_range(
        request,
        now,
        default_span=_DEFAULT_SPAN,
        max_span=_MAX_SPAN[bucket],
        width=width,
        bucket=bucket,
    )
    return SeriesRange(bucket, width, start, end, align_down(now - ROLLUP_MARGIN, width))


def profile_points(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    points = []
    for r in rows:
        point: dict[str, Any] = {"time": r["bucket"]}
        for name, column in _PROFILE_SUMS:
            point[name] = r[column]
        for name, column in _PROFILE_LATEST:
            point[name] = r[column]
        points.append(point)
    return points


def _rate(point: Mapping[str, Any]) -> float | None:
    impressions = point["impressions"]
    if not impressions:
        return None
    return float(point["likes"] + point["comments"] + point["shares"]) / float(impressions)


@routes.get(f"{API}/metrics/profile")
async def profile(request: web.Request) -> web.Response:
    _, user = reader(request)
    rng = series_range(request, _PROFILE_WIDTHS)

    async def compute() -> dict[str, Any]:
        async with connection(request) as conn:
            rows = await profile_series(conn, user, rng.bucket, rng.start, rng.end, rng.raw_from)
        series = profile_points(rows)
        totals = {name: sum(p[name] for p in series) for name, _ in _PROFILE_SUMS}
        # The newest value each absolute figure had in the range (null if never reported).
        latest: dict[str, Any] = dict.fromkeys(name for name, _ in _PROFILE_LATEST)
        for p in series:
            for name, _ in _PROFILE_LATEST:
                if p[name] is not None:
                    latest[name] = p[name]
        return _envelope(user, rng, series, totals, latest=latest)

    return await cached(request, user, f"profile:{rng.key}", compute)


@routes.get(f"{API}/metrics/engagement")
async def engagement(request: web.Request) -> web.Response:
    _, user = reader(request)
    rng = series_range(request, _ENGAGEMENT_WIDTHS)

    async def compute() -> dict[str, Any]:
        async with connection(request) as conn:
            rows = await engagement_series(conn, user, rng.width, rng.start, rng.end, rng.raw_from)
        series = []
        for r in rows:
            point: dict[str, Any] = {"time": r["bucket"]}
            point.update((name, r[column]) for name, column in _ENGAGEMENT_SUMS)
            point["engagementRate"] = _rate(point)
            point["events"] = r[EVENTS]
            series.append(point)
        totals: dict[str, Any] = {n: sum(p[n] for p in series) for n, _ in _ENGAGEMENT_SUMS}
        totals["engagementRate"] = _rate(totals)
        totals["events"] = sum(p["events"] for p in series)
        return _envelope(user, rng, series, totals)

    return await cached(request, user, f"engagement:{rng.key}", compute)


def _envelope(
    user: str, rng: SeriesRange, series: list[dict[str, Any]], totals: dict[str, Any], **more: Any
) -> dict[str, Any]:
    return {
        "userId": user,
        "bucket": rng.bucket,
        "from": rng.start,
        "to": rng.end,
        "series": series,
        "totals": totals,
        **more,
    }


@routes.get(f"{API}/metrics/catalog")
async def catalog(request: web.Request) -> web.Response:
    reader(request)
    return json_response(_CATALOG, headers={"Cache-Control": "private, max-age=300"})


@routes.get(f"{API}/metrics/aggregations")
async def aggregations(request: web.Request) -> web.Response:
    _, user = reader(request)
    name = request.query.get("name")
    if name is not None and name not in AGGREGATIONS:
        raise ApiError(
            400,
            "invalid_parameter",
            f"name must be one of {', '.join(AGGREGATIONS)}",
            "name",
        )
    names = [name] if name is not None else list(AGGREGATIONS)
    start, end = time_range(
        request,
        request.app[CLOCK](),
        default_span=_DEFAULT_SPAN,
        max_span=_AGGREGATION_MAX_SPAN,
        width=timedelta(hours=1),
    )

    async def compute() -> dict[str, Any]:
        async with connection(request) as conn:
            rows = await aggregation_rows(conn, user, names, start, end)
        points = [
            {
                "time": r["time"],
                "name": r["metric_name"],
                "period": r["period"],
                "value": r["value"],
                "sampleCount": r["sample_count"],
            }
            for r in rows
        ]
        return {"userId": user, "from": start, "to": end, "aggregations": points}

    what = f"aggregations:{name or '*'}:{start.timestamp():.0f}:{end.timestamp():.0f}"
    return await cached(request, user, what, compute)
