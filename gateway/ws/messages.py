"""What a WebSocket client may say, and the answers: one function per client message, the
per-second budget and the strikes. Nothing here can raise out to the connection: a bug costs
one `internal_error` answer (see `receive`).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Final

import msgspec
from aiohttp import WSMessage, WSMsgType
from redis.exceptions import RedisError

from gateway.auth import Principal
from gateway.ws.fanout import Fanout
from gateway.ws.frames import error_frame, id_key, notice_frame, text_frame
from gateway.ws.input import MAX_NESTING, is_utf8, nests_too_deep
from gateway.ws.prom import RESUMES
from gateway.ws.replay import ResyncNeeded, replay
from gateway.ws.session import Session
from gateway.ws.snapshots import SnapshotUnavailable, resync, send_snapshot
from schemas.aggregations import AGGREGATION_METRICS
from schemas.metrics import CATALOGUE
from schemas.settings import Settings
from schemas.timefmt import iso_ms
from schemas.ws import (
    AckData,
    ClientMessage,
    Ping,
    Pong,
    PongData,
    Resume,
    Subscribe,
    SubscribeAlerts,
    Subscribed,
    SubscribeData,
    Unsubscribe,
    UnsubscribeAlerts,
    Unsubscribed,
    UnsubscribeData,
    client_decoder,
    server_encoder,
)

__all__ = ["receive"]

log = logging.getLogger(__name__)

# Bad frames a client may send (each answered with an error) before it is disconnected.
_STRIKES: Final = 3
_CLIENT_TYPES: Final = frozenset(
    {"subscribe", "unsubscribe", "subscribe_alerts", "unsubscribe_alerts", "ping", "resume"}
)
_NO_SNAPSHOT: Final = "current values are unavailable now; live updates follow"
# What `subscribe` accepts, and what an empty list means: the live catalogue and the derived
# series (computed by the maintenance task, announced on ia:metrics like the others).
_SUBSCRIBABLE: Final = (*CATALOGUE, *AGGREGATION_METRICS)
_KNOWN: Final = frozenset(_SUBSCRIBABLE)


class _Envelope(msgspec.Struct):
    type: str = ""


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)


async def receive(session: Session, fanout: Fanout, settings: Settings, msg: WSMessage) -> None:
    session.last_seen = time.monotonic()
    if msg.type is WSMsgType.ERROR or not await _admit(session, settings):
        return  # aiohttp closed the socket itself (1009) on an ERROR
    if msg.type is WSMsgType.PING:
        await session.ws.pong(msg.data)
        return
    if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return  # PONG: proof of life, recorded above
    raw: bytes = msg.data
    if not await _screen(session, settings, msg.type, raw):
        return
    try:
        message = client_decoder.decode(raw)
    except msgspec.ValidationError as e:
        kind = _envelope_type(raw)
        if kind not in _CLIENT_TYPES:
            await _strike(session, "unknown_type", f"unknown message type {kind[:64]!r}", 1008)
        else:
            await _strike(session, "invalid_message", str(e), 1008)
        return
    except msgspec.DecodeError as e:
        await _strike(session, "malformed_json", str(e), 1008)
        return
    try:
        await _handle(session, fanout, settings, message)
    except Exception:  # a bug must cost one answer, never the connection or the process
        log.exception("websocket message failed", extra={"user": session.principal.subject})
        session.send(error_frame("internal_error", "the message could not be processed"))


async def _screen(session: Session, settings: Settings, kind: WSMsgType, raw: bytes) -> bool:
    """False, after an error frame or a close, for a frame the decoder must not see: too
    large, not UTF-8, or nested too deep (see gateway/ws/input.py)."""
    if len(raw) > settings.ws_max_frame_bytes:
        limit = settings.ws_max_frame_bytes
        await _strike(session, "frame_too_large", f"messages are limited to {limit} bytes", 1009)
        return False
    if not is_utf8(raw):
        if kind is WSMsgType.TEXT:  # RFC 6455 section 8.1: fail the connection
            await session.close(1007, "text message is not valid UTF-8")
        else:
            await _strike(session, "invalid_utf8", "messages must be UTF-8 JSON", 1007)
        return False
    if nests_too_deep(raw):
        text = f"messages may nest objects and arrays at most {MAX_NESTING} levels deep"
        await _strike(session, "too_deeply_nested", text, 1008)
        return False
    return True


def _envelope_type(raw: bytes) -> str:
    try:
        return _envelope_decoder.decode(raw).type
    except msgspec.DecodeError:
        return ""


async def _admit(session: Session, settings: Settings) -> bool:
    """Count the frame against the per-second budget; False if it must be ignored."""
    now = time.monotonic()
    if now - session.window_start >= 1.0:
        session.window_start, session.window_count = now, 0
    session.window_count += 1
    limit = settings.ws_max_client_rate
    if session.window_count <= limit:
        return True
    if session.window_count == limit + 1:
        session.send(
            error_frame("rate_limited", f"more than {limit} messages in a second; ignoring")
        )
    elif session.window_count > 2 * limit:
        await session.close(1008, "message rate exceeded")
    return False


async def _strike(session: Session, code: str, message: str, close_code: int) -> None:
    session.strikes += 1
    session.send(error_frame(code, message))
    if session.strikes >= _STRIKES:
        await session.close(close_code, f"too many invalid messages ({code})")


async def _handle(
    session: Session, fanout: Fanout, settings: Settings, message: ClientMessage
) -> None:
    match message:
        case Subscribe(data=d):
            await _subscribe(session, fanout, settings, d)
        case Unsubscribe(data=d):
            _unsubscribe(session, fanout, d)
        case SubscribeAlerts(data=d) | UnsubscribeAlerts(data=d):
            user = _target(session, d.user_id)
            if user is not None:
                on = isinstance(message, SubscribeAlerts)
                fanout.watch_alerts(session, user, on=on)
                ack = AckData("alerts", user)
                session.send(_encode(Subscribed(ack) if on else Unsubscribed(ack)))
        case Ping():
            now = iso_ms(datetime.now(UTC))
            session.send(_encode(Pong(PongData(now))))
        case Resume(data=d):
            await _resume(session, fanout, d.last_event_id)


async def _subscribe(
    session: Session, fanout: Fanout, settings: Settings, data: SubscribeData
) -> None:
    user = _target(session, data.user_id)
    if user is None:
        return
    known = _known(session, data.metrics or list(_SUBSCRIBABLE))
    if not known:
        return
    if data.update_frequency is not None:
        lo, hi = settings.ws_min_update_frequency, settings.ws_max_update_frequency
        session.frequency = min(max(data.update_frequency, lo), hi)
        session.next_due = min(session.next_due, time.monotonic() + session.frequency)
    fanout.subscribe(session, user, known)
    ack = AckData("metrics", user, sorted(known), session.frequency)
    session.send(_encode(Subscribed(ack)))
    try:
        await send_snapshot(fanout.snapshots, session, {user: known})
    except SnapshotUnavailable:
        session.send(error_frame("snapshot_unavailable", _NO_SNAPSHOT))


def _unsubscribe(session: Session, fanout: Fanout, data: UnsubscribeData) -> None:
    user = _target(session, data.user_id)
    if user is None:
        return
    names = _known(session, data.metrics) if data.metrics else None
    current = session.subs.get(user, frozenset())
    removed = current if names is None else current & names
    fanout.unsubscribe(session, user, names)
    session.send(_encode(Unsubscribed(AckData("metrics", user, sorted(removed)))))


def _encode(message: Subscribed | Unsubscribed | Pong) -> bytes:
    return text_frame(server_encoder.encode(message))


def _target(session: Session, requested: str | None) -> str | None:
    """Whose data the message is about; None (and an error sent) if the client may not."""
    principal: Principal = session.principal
    if requested is None or requested == principal.subject:
        return principal.subject
    if principal.role == "admin":
        return requested
    session.send(error_frame("forbidden", "only an admin may watch another user"))
    return None


def _known(session: Session, names: list[str]) -> frozenset[str]:
    """The subscribable names among `names`; an error names the others."""
    unknown = sorted({n for n in names if n not in _KNOWN})
    if unknown:
        text = f"unknown metrics: {', '.join(unknown)}"
        session.send(error_frame("unknown_metric", text, unknown))
    return frozenset(n for n in names if n in _KNOWN)


async def _resume(session: Session, fanout: Fanout, last_event_id: str) -> None:
    """Replay what the session's subscriptions missed after `last_event_id`, or resync."""
    session.begin_hold()
    covered = None
    try:
        try:
            done = await replay(
                fanout.redis, session, id_key(last_event_id), fanout.shared.soft_bytes
            )
        except ResyncNeeded as e:
            RESUMES.labels("resync").inc()
            await resync(fanout.snapshots, session, str(e))
            return
        RESUMES.labels("replayed").inc()
        session.send(notice_frame("resumed", f"{done.messages} missed messages replayed"))
        covered = done.metrics
        if done.metrics is not None:
            session.floor_metrics = max(session.floor_metrics or done.metrics, done.metrics)
        if done.alerts is not None:
            session.floor_alerts = max(session.floor_alerts or done.alerts, done.alerts)
    except RedisError as e:
        log.warning("resume failed", extra={"error": repr(e)})
        session.send(error_frame("resume_unavailable", "the update history is unavailable"))
    except SnapshotUnavailable:
        session.send(error_frame("snapshot_unavailable", _NO_SNAPSHOT))
    finally:
        session.end_hold(covered)
