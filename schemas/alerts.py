"""The `ia:alerts` entry: what the alerting stage appends and every gateway's fan-out reads.

One entry per announced alert, fields `v` (the format version, `1`), `alert` (the `Alert` below
as JSON, camelCase) and, from the alerting group (pipeline/stages/alerting.py), `state`
(`firing` or `resolved`; absent: firing). `alert_entry()` builds the fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from schemas.events import UserId

__all__ = [
    "ALERT_ENTRY_VERSION",
    "ALERT_FIELD",
    "STATE_FIELD",
    "AlertEntryState",
    "Alert",
    "Severity",
    "alert_decoder",
    "alert_entry",
]

# Bumped only for an incompatible change; readers skip (and count) versions they do not know.
ALERT_ENTRY_VERSION: Final = 1
ALERT_FIELD: Final = "alert"
# Whether the entry announces a firing or its end; absent means firing.
STATE_FIELD: Final = "state"
AlertEntryState = Literal["firing", "resolved"]

Severity = Literal["info", "warning", "critical"]
# RFC 3339 with a zone, as the worker writes `asOf` (`2025-01-31T12:00:00.000Z`).
Timestamp = Annotated[str, msgspec.Meta(min_length=20, max_length=40)]


class Alert(msgspec.Struct, frozen=True, rename="camel"):
    """A fired alert rule: `metric` reached `value`, crossing `threshold`.

    `as_of` is the event time of the newest data the rule saw (defaults to `triggered_at`).
    Unknown fields are ignored so the producer can add fields before the readers know them.
    """

    alert_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    user_id: UserId
    rule_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    metric: str
    value: float | None
    threshold: float
    severity: Severity
    message: Annotated[str, msgspec.Meta(max_length=1024)]
    triggered_at: Timestamp
    as_of: Timestamp | None = None


alert_decoder: Final = msgspec.json.Decoder(Alert)
_encoder: Final = msgspec.json.Encoder()


def alert_entry(alert: Alert, state: AlertEntryState | None = None) -> dict[str, Any]:
    """The stream fields of one alert, ready for XADD. `state` (`firing` or `resolved`), when
    given, is a third field, `state`: readers that do not know it read the alert as before
    (the field is absent from entries written before the alerting group, which all fired)."""
    fields: dict[str, Any] = {"v": ALERT_ENTRY_VERSION, ALERT_FIELD: _encoder.encode(alert)}
    if state is not None:
        fields[STATE_FIELD] = state
    return fields
