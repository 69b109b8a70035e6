"""Prometheus metrics of the worker side. Names follow Prometheus conventions: base units,
`_total` for counters, `_seconds` for durations."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = [
    "ALERTS_EVALUATED",
    "ALERTS_NOTIFIED",
    "ALERT_TRANSITIONS",
    "BATCH_ROWS",
    "BATCH_SECONDS",
    "DEAD_LETTERS",
    "RECLAIMED",
    "STAGE_ERRORS",
]

BATCH_ROWS = Histogram(
    "ia_batch_rows",
    "Events per processed batch.",
    ["stage"],
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000),
)
BATCH_SECONDS = Histogram(
    "ia_batch_duration_seconds",
    "Time from handing a batch to its stage until it is acknowledged.",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEAD_LETTERS = Counter("ia_dead_letters_total", "Entries or events sent to ia:dlq.", ["stage"])
RECLAIMED = Counter(
    "ia_reclaimed_entries_total", "Entries taken over from idle consumers.", ["group"]
)
STAGE_ERRORS = Counter(
    "ia_stage_errors_total", "Failed batch attempts, by stage and kind.", ["stage", "kind"]
)
ALERTS_EVALUATED = Counter(
    "ia_alerts_evaluated_total", "Alert rule evaluations by the alerting group (one per rule)."
)
ALERT_TRANSITIONS = Counter(
    "ia_alert_transitions_total", "Alert state transitions committed, by the state entered.", ["to"]
)
ALERTS_NOTIFIED = Counter(
    "ia_alerts_notified_total", "Alerts appended to ia:alerts, by state.", ["state"]
)
