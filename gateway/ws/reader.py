"""The fan-out's reader: `ia:metrics` and `ia:alerts`, read with plain XREAD, forever.

Plain XREAD from positions of its own, not a consumer group: every replica must see every
update for its own sockets, and a group would split them. Each entry is handed to a callback
of the fan-out (gateway/ws/fanout.py) before the next is read, so the position it then holds
is one whose entries every session has been offered.

The reader is supervised: any error, `redis.exceptions.TimeoutError` included, is logged,
counted and followed by a restart from the same position, so nothing is skipped; if entries
were trimmed while it was down, it moves to what exists and tells the fan-out, which resyncs
every session (docs/architecture.md, "Costs that shaped the design").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from redis.asyncio import Redis

from gateway.ws import prom as m
from gateway.ws.replay import stream_bounds
from schemas.stream_ids import id_key
from schemas.streams import ALERTS_STREAM, METRICS_STREAM

__all__ = [
    "BACKOFF_FIRST_S",
    "BACKOFF_MAX_S",
    "READ_BLOCK_MS",
    "READ_COUNT",
    "READ_SOCKET_TIMEOUT_S",
    "Dispatch",
    "StreamReader",
]

log = logging.getLogger(__name__)

# Well under the reader's socket timeout: a busy loop can delay the reply by seconds before
# redis-py gives up on it, and then the supervisor restarts the reader (docs/architecture.md,
# "Costs that shaped the design").
READ_BLOCK_MS: Final = 1000
READ_SOCKET_TIMEOUT_S: Final = 10.0
# Entries per XREAD; a larger burst is read in several rounds.
READ_COUNT: Final = 500
BACKOFF_FIRST_S: Final = 0.05
BACKOFF_MAX_S: Final = 2.0
_STREAMS: Final = (METRICS_STREAM, ALERTS_STREAM)

# Called with (entry id, fields) for each entry, in id order per stream.
Dispatch = Callable[[str, dict[bytes, bytes]], None]


class StreamReader:
    """Reads both streams from `positions` and hands each entry to its stream's callback;
    `on_gap` is called when entries after the `ia:metrics` position were lost meanwhile."""

    def __init__(
        self,
        client: Redis,
        *,
        on_metrics: Dispatch,
        on_alert: Dispatch,
        on_gap: Callable[[], None],
        block_ms: int = READ_BLOCK_MS,
    ) -> None:
        self._client = client  # its own connection: it spends its life blocked in XREAD
        self._dispatch = {METRICS_STREAM: on_metrics, ALERTS_STREAM: on_alert}
        self._on_gap = on_gap
        self._block_ms = block_ms
        self.positions: dict[str, str] = {}
        self._backoff = BACKOFF_FIRST_S
        self.stopping = False

    @property
    def metrics_position(self) -> str:
        """The last `ia:metrics` id dispatched: everything up to it reached the sessions."""
        return self.positions.get(METRICS_STREAM, "0-0")

    async def run(self) -> None:
        """Read until `stopping` is set, restarting after each failure with a backoff."""
        failed = False
        while not self.stopping:
            try:
                if failed:
                    await self._check_gap()
                    failed = False
                await self._read_forever()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failed = True
                m.READER_ERRORS.labels(type(e).__name__).inc()
                log.warning(
                    "fan-out reader failed; restarting",
                    extra={"error": repr(e), "retry_in_s": self._backoff},
                )
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    async def _read_forever(self) -> None:
        for stream in _STREAMS:
            if stream not in self.positions:
                # Explicit ids, not `$`: `$` sent again after an empty XREAD would skip the
                # entries appended between the two calls.
                bounds = await stream_bounds(self._client, stream)
                last = bounds.last if bounds is not None else (0, 0)
                self.positions[stream] = f"{last[0]}-{last[1]}"
        while not self.stopping:
            streams: dict[Any, Any] = dict(self.positions)
            reply: Any = await self._client.xread(streams, count=READ_COUNT, block=self._block_ms)
            self._backoff = BACKOFF_FIRST_S
            for raw_stream, entries in reply or ():
                stream = raw_stream.decode()
                dispatch = self._dispatch[stream]
                for raw_id, fields in entries:
                    entry_id = raw_id.decode()
                    self.positions[stream] = entry_id
                    dispatch(entry_id, fields)

    async def _check_gap(self) -> None:
        """After a failure: if entries past our position were trimmed meanwhile (or the stream
        was replaced by an older one), continue from what exists and call `on_gap`."""
        bounds = await stream_bounds(self._client, METRICS_STREAM)
        position = id_key(self.metrics_position)
        if bounds is None or not bounds.lost_after(position):
            return
        if position > bounds.last:
            self.positions[METRICS_STREAM] = f"{bounds.last[0]}-{bounds.last[1]}"
        self._on_gap()
