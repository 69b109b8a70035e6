"""The request bodies of the rules API (gateway/api/rules.py), as msgspec structs: one decoder
for the rule, then one for its `params` chosen by `kind`, so an error in the params is named
under `$.params` (`$.params.metric`). Published in /openapi.json through
gateway/ops/openapi_bodies.py; the annotations that only document (the metric enum, the time
zone) change no decoding, and what is checked after decoding is in `rules.py`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final, Literal

import msgspec

from schemas.events import EventType
from schemas.metrics import CATALOGUE
from schemas.rules import (
    CHANGE_WINDOW_MAX_S,
    DURATION_MAX_S,
    MAX_EXPRESSION_CHARS,
    HealthCheck,
    Kind,
)

__all__ = [
    "PARAMS",
    "ChangeParams",
    "CustomParams",
    "GoalParams",
    "HealthParams",
    "NoDataParams",
    "QuietHours",
    "RuleIn",
    "RulePatch",
    "Severity",
    "ThresholdParams",
    "WebSocketChannel",
]

Severity = Literal["info", "warning", "critical"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Duration = Annotated[int, msgspec.Meta(ge=0, le=DURATION_MAX_S)]
# Finite and far from float limits, as goals' targets.
Number = Annotated[float, msgspec.Meta(ge=-1e12, le=1e12)]
Metric = Annotated[str, msgspec.Meta(extra_json_schema={"enum": sorted(CATALOGUE)})]
LocalTime = Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
TimeZone = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, description="an IANA time zone")
]


class QuietHours(msgspec.Struct, forbid_unknown_fields=True):
    """Local times in `timeZone`; `from` after `to` spans midnight (22:00-07:00)."""

    from_: LocalTime = msgspec.field(name="from")
    to: LocalTime = msgspec.field(name="to")
    time_zone: TimeZone = msgspec.field(name="timeZone")


class WebSocketChannel(msgspec.Struct, forbid_unknown_fields=True, tag_field="type",
                       tag="websocket"):  # fmt: skip
    """Delivery to the user's WebSockets (`alert_triggered`). The channel issue adds webhook,
    email, Slack and Discord as more tagged structs in the same list."""


Channels = Annotated[list[WebSocketChannel], msgspec.Meta(min_length=1, max_length=8)]


class RuleIn(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    name: Name
    kind: Kind
    params: Annotated[msgspec.Raw, msgspec.Meta(description="its shape depends on `kind`")]
    severity: Severity = "warning"
    for_seconds: Duration = 0
    keep_firing_for_seconds: Duration = 0
    cooldown_seconds: Duration = 3600
    quiet_hours: QuietHours | None = None
    channels: Channels = msgspec.field(default_factory=lambda: [WebSocketChannel()])
    enabled: bool = True


class RulePatch(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """Members to change. `params` is checked against `kind` (the new one, or the stored
    one); a new `kind` needs its `params`. `quietHours: null` removes the quiet hours."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    kind: Kind | msgspec.UnsetType = msgspec.UNSET
    params: (
        Annotated[msgspec.Raw, msgspec.Meta(description="its shape depends on `kind`")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    severity: Severity | msgspec.UnsetType = msgspec.UNSET
    for_seconds: Duration | msgspec.UnsetType = msgspec.UNSET
    keep_firing_for_seconds: Duration | msgspec.UnsetType = msgspec.UNSET
    cooldown_seconds: Duration | msgspec.UnsetType = msgspec.UNSET
    quiet_hours: QuietHours | None | msgspec.UnsetType = msgspec.UNSET
    channels: Channels | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class ThresholdParams(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    metric: Metric
    op: Literal["above", "below"]
    value: Number


class ChangeParams(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """Percent change of the metric over the last `windowSeconds` against the window before.
    An earlier window of zero gives no change: the rule does not fire."""

    metric: Metric
    op: Literal["up", "down"]
    percent: Annotated[float, msgspec.Meta(gt=0, le=1e6)]
    window_seconds: Annotated[int, msgspec.Meta(ge=60, le=CHANGE_WINDOW_MAX_S)]


class GoalParams(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    goal_id: uuid.UUID
    event: Literal["reached", "offTrack"]
    margin_percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0
    before_seconds: Annotated[int, msgspec.Meta(ge=0, le=366 * 86_400)] = 0


class NoDataParams(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    seconds: Annotated[int, msgspec.Meta(ge=60, le=CHANGE_WINDOW_MAX_S)]
    event_type: EventType | None = None


class HealthParams(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """`value`: entries (groupLag, dlqGrowth per hour), seconds (oldestPendingAge, rollupLag,
    and how long TimescaleDB or Redis has been unreachable)."""

    check: HealthCheck
    value: Annotated[float, msgspec.Meta(ge=0, le=1e12)] = 0.0


class CustomParams(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    expression: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EXPRESSION_CHARS)]


# Each kind's params decoder, built once.
PARAMS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    "threshold": msgspec.json.Decoder(ThresholdParams),
    "change": msgspec.json.Decoder(ChangeParams),
    "goal": msgspec.json.Decoder(GoalParams),
    "nodata": msgspec.json.Decoder(NoDataParams),
    "health": msgspec.json.Decoder(HealthParams),
    "custom": msgspec.json.Decoder(CustomParams),
}
