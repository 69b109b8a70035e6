"""Retention windows in the full edition: its retention policies follow RETENTION_DAYS.

Migration 0005 creates the policies with 90 days; an operator's RETENTION_DAYS must rule there
as it does in the Apache edition, where the maintenance task drops chunks itself. The daily
rollup keeps DAILY_RETENTION_DAYS in both: it outlives raw data, for year-over-year views.
"""

from __future__ import annotations

import logging
from typing import Final

from sinks.db import Conn
from sinks.rollups import ROLLUPS

__all__ = ["DAILY_RETENTION_DAYS", "RAW_TABLES", "align_policies", "retention_days"]

log = logging.getLogger(__name__)

RAW_TABLES: Final = (
    "profile_metrics",
    "engagement_metrics",
    "real_time_events",
    "metric_aggregations",
    "alert_history",
    "performance_metrics",
)
DAILY_RETENTION_DAYS: Final = 730

# Sets a retention policy's window where it differs. A policy's relation is a hypertable or,
# for a continuous aggregate, the hypertable that holds its materialisation.
_ALIGN: Final = """
SELECT alter_job(j.id, config => j.config
                 || jsonb_build_object('drop_after', make_interval(days => $2)::text))
FROM _timescaledb_config.bgw_job j
WHERE j.proc_name = 'policy_retention'
  AND j.hypertable_id = coalesce(
        (SELECT mat_hypertable_id FROM _timescaledb_catalog.continuous_agg
         WHERE user_view_schema = current_schema() AND user_view_name = $1),
        (SELECT id FROM _timescaledb_catalog.hypertable
         WHERE schema_name = current_schema() AND table_name = $1))
  AND (j.config->>'drop_after')::interval IS DISTINCT FROM make_interval(days => $2)
"""


def retention_days(days: int) -> dict[str, int]:
    """Each relation's retention in days, given RETENTION_DAYS."""
    out = dict.fromkeys((*RAW_TABLES, *ROLLUPS), days)
    out["profile_metrics_daily"] = DAILY_RETENTION_DAYS
    return out


async def align_policies(conn: Conn, days: int) -> dict[str, int]:
    """Full edition: bring every retention policy's window to its relation's retention.
    Returns the policies changed, with their new days; a second call changes nothing."""
    changed: dict[str, int] = {}
    for relation, keep in retention_days(days).items():
        if await conn.fetch(_ALIGN, relation, keep):
            changed[relation] = keep
    if changed:
        log.info("retention policies changed", extra={"policies": changed})
    return changed
