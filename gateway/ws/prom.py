"""Prometheus metrics of the WebSocket service, in the default registry the gateway exposes.

Counters are incremented once per fan-out round, not once per socket, so that watching 10,000
sockets costs the broadcast nothing measurable.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CLOSED",
    "CONNECTIONS",
    "DROPPED",
    "FANOUT_SECONDS",
    "READER_ERRORS",
    "RESUMES",
    "SENT",
    "SUBSCRIPTIONS",
]

CONNECTIONS = Gauge("ia_ws_connections", "Open WebSocket connections of this process.")
SUBSCRIPTIONS = Gauge(
    "ia_ws_subscriptions",
    "Watched (connection, user) pairs, by channel (metrics or alerts).",
    ["channel"],
)
SENT = Counter("ia_ws_messages_sent_total", "Messages written to sockets, by type.", ["type"])
DROPPED = Counter(
    "ia_ws_dropped_updates_total",
    "Intermediate metric values replaced by a newer one before they were sent, by reason: "
    "backpressure (the client reads too slowly), frequency (its updateFrequency), hold (a "
    "snapshot or replay was being sent).",
    ["reason"],
)
CLOSED = Counter(
    "ia_ws_closed_by_server_total", "Connections the server closed, by close code.", ["code"]
)
FANOUT_SECONDS = Histogram(
    "ia_ws_fanout_latency_seconds",
    "From a stream entry's append (its id's time) until the last socket write for it here.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
READER_ERRORS = Counter(
    "ia_ws_reader_errors_total",
    "Failures of the fan-out reader (each followed by a restart), by exception type.",
    ["kind"],
)
RESUMES = Counter(
    "ia_ws_resumes_total", "Resume requests, by outcome (replayed or resync).", ["outcome"]
)
