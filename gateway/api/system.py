"""`GET /api/v1/system/performance?from&to&bucket&kind` (admin role: 401 without a token, 403
for any other role): the `performance_metrics` samples every gateway and worker records
(sinks/perf_sampler.py), aggregated per process and time bucket.

- `bucket`: 10s, 1m (default), 5m, 1h or 1d, UTC-aligned; every bucket overlapping [from, to)
  is returned whole and the answer's `from`/`to` are the aligned range.
- Defaults: `to` now, `from` one bucket-dependent span earlier (DEFAULT_SPAN); a longer range
  than MAX_SPAN for the bucket is a 400 naming `from`.
- `kind`: only `gateway`, `worker` or `all` (`analytics up`) processes.
- One entry per process (kind, name) with its points oldest first; buckets without samples are
  left out. Rates, batch size and CPU are means over the bucket's samples; COPY p99, group lag,
  WebSocket connections and RSS are the bucket's maximum.

Not cached: operators ask rarely, and want the newest sample.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final, cast, get_args

from aiohttp import web

from gateway.api.common import API, connection, json_response, time_range
from gateway.auth import require_role
from gateway.errors import ApiError
from gateway.keys import CLOCK
from sinks.performance import ProcessKind, bucketed

__all__ = ["BUCKETS", "DEFAULT_SPAN", "KINDS", "MAX_POINTS", "MAX_SPAN", "routes"]

routes = web.RouteTableDef()

BUCKETS: Final[dict[str, timedelta]] = {
    "10s": timedelta(seconds=10),
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
_DEFAULT_BUCKET: Final = "1m"
# What an operator looking at this width most likely wants to see.
DEFAULT_SPAN: Final[dict[str, timedelta]] = {
    "10s": timedelta(hours=1),
    "1m": timedelta(hours=6),
    "5m": timedelta(days=1),
    "1h": timedelta(days=7),
    "1d": timedelta(days=90),
}
# The longest range per width: at most 2,160-2,880 points per process.
MAX_SPAN: Final[dict[str, timedelta]] = {
    "10s": timedelta(hours=6),
    "1m": timedelta(days=2),
    "5m": timedelta(days=7),
    "1h": timedelta(days=90),
    "1d": timedelta(days=3 * 365 + 1),
}
# Points per answer over every process; past it the answer says `truncated` (many short-lived
# replicas in a long range), and a narrower range or a `kind` gets the rest.
MAX_POINTS: Final = 20_000
KINDS: Final[tuple[str, ...]] = get_args(ProcessKind)


def _parameters(request: web.Request) -> tuple[str, datetime, datetime, ProcessKind | None]:
    """Bucket, aligned start and end, kind; a 400 naming the parameter otherwise."""
    bucket = request.query.get("bucket", _DEFAULT_BUCKET)
    if bucket not in BUCKETS:
        raise ApiError(
            400, "invalid_parameter", f"bucket must be one of {', '.join(BUCKETS)}", "bucket"
        )
    kind = request.query.get("kind")
    if kind is not None and kind not in KINDS:
        raise ApiError(400, "invalid_parameter", f"kind must be one of {', '.join(KINDS)}", "kind")
    start, end = time_range(
        request,
        request.app[CLOCK](),
        default_span=DEFAULT_SPAN[bucket],
        max_span=MAX_SPAN[bucket],
        width=BUCKETS[bucket],
        bucket=bucket,
    )
    return bucket, start, end, cast(ProcessKind | None, kind)


def _point(row: Any) -> dict[str, Any]:
    return {
        "time": row["bucket"],
        "samples": row["samples"],
        "eventsInPerS": row["events_in_per_s"],
        "eventsOutPerS": row["events_out_per_s"],
        "batchSizeAvg": row["batch_size_avg"],
        "copyLatencyP99MaxS": row["copy_latency_p99_max"],
        "groupLagMax": row["group_lag_max"],
        "wsConnectionsMax": row["ws_connections_max"],
        "rssBytesMax": row["rss_bytes_max"],
        "cpuPercent": row["cpu_percent"],
    }


@routes.get(f"{API}/system/performance")
async def performance(request: web.Request) -> web.Response:
    require_role(request, "admin")
    bucket, start, end, kind = _parameters(request)
    async with connection(request) as conn:
        rows = await bucketed(conn, BUCKETS[bucket], start, end, kind, MAX_POINTS + 1)
    processes: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows[:MAX_POINTS]:
        key = (row["process_kind"], row["process_name"])
        entry = processes.get(key)
        if entry is None:
            entry = processes[key] = {"kind": key[0], "name": key[1], "points": []}
        entry["points"].append(_point(row))
    return json_response(
        {
            "bucket": bucket,
            "from": start,
            "to": end,
            "truncated": len(rows) > MAX_POINTS,
            "processes": list(processes.values()),
        }
    )
