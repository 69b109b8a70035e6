"""Server messages as ready-to-write WebSocket frames, and stream ids as sortable keys.

A server frame is unmasked and, since we negotiate no compression, the same bytes for every
client, so each distinct payload is encoded and framed once and written to many sockets.
"""

from __future__ import annotations

import struct
import time
from datetime import datetime
from typing import Any, Final

import msgspec

from schemas.alerts import Alert
from schemas.ws import (
    AlertNotice,
    AlertTriggered,
    ErrorData,
    ErrorMessage,
    MetricsData,
    MetricsUpdate,
    Notice,
    NoticeData,
    server_encoder,
)

__all__ = [
    "PING_FRAME",
    "EntryKey",
    "alert_frame",
    "epoch_ms",
    "error_frame",
    "id_key",
    "lag_ms",
    "metrics_frame",
    "notice_frame",
    "text_frame",
]

EntryKey = tuple[int, int]
# An unmasked, empty PING (opcode 0x9) with FIN set.
PING_FRAME: Final = b"\x89\x00"
_HEADER2: Final = struct.Struct("!BBH")
_HEADER8: Final = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed, final TEXT frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _HEADER2.pack(0x81, 126, n) + payload
    return _HEADER8.pack(0x81, 127, n) + payload


def id_key(entry_id: str) -> EntryKey:
    """A stream id as a sortable pair; `<ms>` alone means `<ms>-0`."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def epoch_ms(stamp: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 time (`...Z`); 0 if unreadable."""
    try:
        return int(datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return 0


def lag_ms(since_ms: int) -> int:
    return max(0, int(time.time() * 1000) - since_ms)


def metrics_frame(entry_id: str, data: MetricsData) -> bytes:
    return text_frame(server_encoder.encode(MetricsUpdate(entry_id, data)))


def alert_frame(entry_id: str, alert: Alert, *, replay: bool) -> bytes:
    fields: dict[str, Any] = msgspec.structs.asdict(alert)
    fields["as_of"] = alert.as_of or alert.triggered_at
    notice = AlertNotice(**fields, lag_ms=lag_ms(epoch_ms(alert.triggered_at)), replay=replay)
    return text_frame(server_encoder.encode(AlertTriggered(entry_id, notice)))


def notice_frame(code: str, message: str) -> bytes:
    return text_frame(server_encoder.encode(Notice(NoticeData(code, message))))


def error_frame(code: str, message: str, metrics: list[str] | None = None) -> bytes:
    return text_frame(server_encoder.encode(ErrorMessage(ErrorData(code, message, metrics))))
