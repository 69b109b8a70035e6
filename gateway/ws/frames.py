"""Server messages as ready-to-write WebSocket frames.

A server frame is unmasked and, since we negotiate no compression, the same bytes for every
client, so each distinct payload is encoded and framed once and written to many sockets.
"""

from __future__ import annotations

import struct
import time
from typing import Any, Final

import msgspec

from schemas.alerts import Alert
from schemas.stream_ids import EntryKey, id_key
from schemas.timefmt import epoch_ms
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

# EntryKey, id_key and epoch_ms live in schemas/ (the workers use them too); re-exported for
# the modules of gateway/ws that import them from here.
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
