"""WebSocket message shapes (docs/websocket.md describes each one).

Every message is a JSON object with `type` first; server messages put their payload under
`data`, and the two that come from a stream (`metrics_update`, `alert_triggered`) carry the
stream entry id as `id`, which a reconnecting client sends back in `resume`. Field names are
camelCase on the wire, as the existing dashboards speak them.

Client messages ignore unknown fields (a dashboard may send more than we read); an unknown
`type` is an error the client is told about.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from schemas.alerts import Alert
from schemas.entries import MetricUpdate
from schemas.events import UserId

# MetricUpdate, the `ia:metrics` update, lives in schemas/entries.py with the rest of that
# entry; re-exported for gateway/ws/session.py, which imports it from here.
__all__ = [
    "AckData",
    "AlertNotice",
    "AlertTriggered",
    "ClientMessage",
    "ErrorData",
    "ErrorMessage",
    "MetricUpdate",
    "MetricsData",
    "MetricsUpdate",
    "Notice",
    "NoticeData",
    "Ping",
    "Pong",
    "PongData",
    "Resume",
    "ResumeData",
    "Subscribe",
    "SubscribeAlerts",
    "SubscribeData",
    "Subscribed",
    "TargetData",
    "Unsubscribe",
    "UnsubscribeAlerts",
    "UnsubscribeData",
    "Unsubscribed",
    "client_decoder",
    "server_encoder",
]

# The catalogue and the derived series are under twenty names; a longer list is a bug or an
# attack, not a dashboard.
MetricNames = Annotated[
    list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]], msgspec.Meta(max_length=64)
]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=86_400)]
# A Redis stream id, `<ms>-<seq>`; a bare `<ms>` means `<ms>-0`.
StreamId = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,20}(-[0-9]{1,20})?\Z")]


class _Struct(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    pass


# --- client -> server --------------------------------------------------------------------


class SubscribeData(_Struct, frozen=True):
    """`metrics` empty or absent: every catalogue metric. `update_frequency` absent: keep the
    connection's current one (0 at first). `user_id`: whose metrics (admins only; default self)."""

    metrics: MetricNames = []
    update_frequency: Seconds | None = None
    user_id: UserId | None = None


class UnsubscribeData(_Struct, frozen=True):
    """`metrics` empty or absent: every metric of that user."""

    metrics: MetricNames = []
    user_id: UserId | None = None


class TargetData(_Struct, frozen=True):
    user_id: UserId | None = None


class ResumeData(_Struct, frozen=True):
    last_event_id: StreamId


class Subscribe(_Struct, frozen=True, tag="subscribe", tag_field="type"):
    data: SubscribeData = SubscribeData()


class Unsubscribe(_Struct, frozen=True, tag="unsubscribe", tag_field="type"):
    data: UnsubscribeData = UnsubscribeData()


class SubscribeAlerts(_Struct, frozen=True, tag="subscribe_alerts", tag_field="type"):
    data: TargetData = TargetData()


class UnsubscribeAlerts(_Struct, frozen=True, tag="unsubscribe_alerts", tag_field="type"):
    data: TargetData = TargetData()


class Ping(_Struct, frozen=True, tag="ping", tag_field="type"):
    pass


class Resume(_Struct, frozen=True, tag="resume", tag_field="type"):
    data: ResumeData


ClientMessage = Subscribe | Unsubscribe | SubscribeAlerts | UnsubscribeAlerts | Ping | Resume
client_decoder: Final = msgspec.json.Decoder(ClientMessage)


# --- server -> client --------------------------------------------------------------------


class AckData(_Struct, frozen=True):
    """`channel` is `metrics` or `alerts`; `metrics` lists what the request changed."""

    channel: str
    user_id: str
    metrics: list[str] | None = None
    update_frequency: float | None = None


class Subscribed(_Struct, frozen=True, tag="subscribed", tag_field="type"):
    data: AckData


class Unsubscribed(_Struct, frozen=True, tag="unsubscribed", tag_field="type"):
    data: AckData


class MetricsData(_Struct, frozen=True):
    """Current values; `as_of` is the event time of the newest data included, `lag_ms` the
    time from its commit to this send. `snapshot`: read from TimescaleDB (on subscribe or
    resync) rather than from the stream; `replay`: sent for a `resume`."""

    user_id: str
    metrics: dict[str, float | None]
    as_of: str
    lag_ms: int
    snapshot: bool = False
    replay: bool = False


class MetricsUpdate(_Struct, frozen=True, tag="metrics_update", tag_field="type"):
    id: str
    data: MetricsData


class AlertNotice(Alert, frozen=True, rename="camel", omit_defaults=True, kw_only=True):
    """An `Alert` with the freshness every streamed message carries."""

    lag_ms: int
    replay: bool = False


class AlertTriggered(_Struct, frozen=True, tag="alert_triggered", tag_field="type"):
    id: str
    data: AlertNotice


class NoticeData(_Struct, frozen=True):
    code: str
    message: str


class Notice(_Struct, frozen=True, tag="system_notification", tag_field="type"):
    data: NoticeData


class PongData(_Struct, frozen=True):
    server_time: str


class Pong(_Struct, frozen=True, tag="pong", tag_field="type"):
    data: PongData


class ErrorData(_Struct, frozen=True):
    """`metrics` names the offending metric names of an `unknown_metric` error."""

    code: str
    message: str
    metrics: list[str] | None = None


class ErrorMessage(_Struct, frozen=True, tag="error", tag_field="type"):
    data: ErrorData


server_encoder: Final = msgspec.json.Encoder()
