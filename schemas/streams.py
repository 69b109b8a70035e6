"""Stream, group and key names: the contract between the gateway and the workers.

Keys that must meet in one Lua call carry the same hash tag (`{p}`), so on a Redis Cluster a
partition's stream, dedup sets and backlog counter live on one slot.
"""

from __future__ import annotations

import zlib
from typing import Final

__all__ = [
    "ALERTING_GROUP",
    "ALERTS_STREAM",
    "DLQ_STREAM",
    "METRICS_STREAM",
    "PROCESSOR_GROUP",
    "backlog_key",
    "dedup_key",
    "events_stream",
    "partition_of",
    "replay_mark_key",
]

# Where the gateway appends accepted events, one stream per partition so replicas share work
# by partition while one user's events keep their order.
_EVENTS: Final = "ia:events:{%d}"
# Per-partition dedup sets, one per time slice of the dedup window; see gateway/ingest/appender.py.
_DEDUP: Final = "ia:dedup:{%d}:%d"
# Per-partition hash of monotonic counters `appended` and `acked` (events, not entries); their
# difference is the backlog the gateway compares with INGEST_MAX_BACKLOG.
_BACKLOG: Final = "ia:backlog:{%d}"
# Set when a dead letter's events were appended back to partition %d by a DLQ replay, so a
# retried replay (the gateway died before removing the letter) does not append them twice.
_REPLAY_MARK: Final = "ia:replayed:{%d}:%s"

# The batch's metric changes after commit, read by alerting, rollup and every gateway's fan-out.
METRICS_STREAM: Final = "ia:metrics"
# Fired alerts, read by the notifier group and every gateway's fan-out.
ALERTS_STREAM: Final = "ia:alerts"
# Entries no stage could process, with reason, stage, delivery count and original payload.
DLQ_STREAM: Final = "ia:dlq"

# The consumer group that validates, enriches and stores events.
PROCESSOR_GROUP: Final = "processor"
# The consumer group on ia:metrics that evaluates the alert rules whose metrics an entry changed
# (pipeline/stages/alerting.py); ia:metrics is trimmed only below what it acknowledged.
ALERTING_GROUP: Final = "alerting"


def partition_of(user_id: str, partitions: int) -> int:
    """Stable across processes and restarts (Python's hash() is salted per process)."""
    return zlib.crc32(user_id.encode()) % partitions


def events_stream(partition: int) -> str:
    return _EVENTS % partition


def dedup_key(partition: int, slice_index: int) -> str:
    return _DEDUP % (partition, slice_index)


def backlog_key(partition: int) -> str:
    return _BACKLOG % partition


def replay_mark_key(partition: int, dlq_entry_id: str) -> str:
    return _REPLAY_MARK % (partition, dlq_entry_id)
