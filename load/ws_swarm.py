"""A swarm of lean WebSocket clients for load/bench_ws.py: one process holds thousands of
subscribed connections (raw asyncio protocols, no WebSocket library) and records when each
update arrives.

    python -m load.ws_swarm HOST PORT PATH COUNT TOKEN

Prints `ready N` once N connections have their acknowledgement and snapshot (or `failed`), then
waits; on `stop` (stdin) prints one JSON line of results and exits. Each injected update
carries its injection time (unix microseconds) as the metric value, so latency is receipt time
minus value: stream append to client receipt, on one machine's clock.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import sys
import time
from array import array
from typing import Any, Final

import orjson

__all__ = ["main"]

# Connects in flight per swarm process: under the server's accept backlog, so no SYN is
# dropped and retried a second later.
_CONCURRENCY: Final = 32
_BUCKET_US: Final = 100  # latency histogram resolution
_BUCKETS: Final = 100_000  # 10 s
_MASK: Final = b"\x11\x22\x33\x44"  # clients must mask; any key will do for a benchmark
_SNAPSHOT: Final = b'"snapshot":true'
_UPDATE: Final = b'{"type":"metrics_update"'
_METRICS: Final = b'"metrics":{"'


def _masked(opcode: int, payload: bytes) -> bytes:
    body = bytes(b ^ _MASK[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + _MASK + body


_SUBSCRIBE: Final = _masked(
    0x1, orjson.dumps({"type": "subscribe", "data": {"metrics": ["profileViews", "likes"]}})
)


class Stats:
    def __init__(self) -> None:
        self.ready = 0
        self.failed = 0
        self.hist: dict[str, array[int]] = {}
        self.entries: dict[str, dict[int, list[int]]] = {}

    def record(self, payload: bytes) -> None:
        """A metrics_update: `..."metrics":{"<name>":<inject_us>...`."""
        now_us = time.time_ns() // 1000
        start = payload.find(_METRICS) + len(_METRICS)
        quote = payload.find(b'"', start)
        name = payload[start:quote].decode()
        end = quote + 2
        while payload[end] not in b",}":
            end += 1
        sent_us = int(float(payload[quote + 2 : end]))
        latency = now_us - sent_us
        hist = self.hist.get(name)
        if hist is None:
            hist = self.hist[name] = array("I", bytes(4 * (_BUCKETS + 1)))
        hist[min(_BUCKETS, max(0, latency) // _BUCKET_US)] += 1
        entry = self.entries.setdefault(name, {}).setdefault(sent_us, [0, 0])
        entry[0] += 1
        entry[1] = max(entry[1], latency)

    def result(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "failed": self.failed,
            "metrics": {
                name: {
                    "hist": {str(i): c for i, c in enumerate(hist) if c},
                    "entries": {str(k): v for k, v in self.entries.get(name, {}).items()},
                }
                for name, hist in self.hist.items()
            },
        }


class Client(asyncio.Protocol):
    """One connection: handshake, subscribe, then read frames; answers pings."""

    __slots__ = ("buf", "done", "handshake", "open", "stats", "transport")

    def __init__(self, stats: Stats, handshake: bytes, done: asyncio.Future[bool]) -> None:
        self.stats = stats
        self.handshake = handshake
        self.done: asyncio.Future[bool] | None = done
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.handshake)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(False)

    def _finish(self, ok: bool) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(ok)
        self.done = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.open:
            rest = self._handshake(buf)
            if rest is None:
                return
            buf = rest
        self.buf = buf[self._frames(buf) :]

    def _handshake(self, buf: bytes) -> bytes | None:
        """What follows the 101 response, or None until it is complete (or refused)."""
        assert self.transport is not None
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return None
        if not buf.startswith(b"HTTP/1.1 101"):
            self._finish(False)
            self.transport.close()
            return None
        self.open = True
        self.transport.write(_SUBSCRIBE)
        return buf[end + 4 :]

    def _frames(self, buf: bytes) -> int:
        """Handle every whole frame in `buf`; the bytes consumed."""
        pos, n = 0, len(buf)
        while n - pos >= 2:
            length, head = buf[pos + 1] & 0x7F, 2
            if length >= 126:
                head = 4 if length == 126 else 10
                if n - pos < head:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + head], "big")
            if n - pos < head + length:
                break
            opcode = buf[pos] & 0x0F
            payload = buf[pos + head : pos + head + length]
            pos += head + length
            if opcode == 0x1:
                self._text(payload)
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(_masked(0xA, payload))
        return pos

    def _text(self, payload: bytes) -> None:
        if not payload.startswith(_UPDATE):
            return
        if _SNAPSHOT in payload:
            self._finish(True)
        else:
            self.stats.record(payload)


async def swarm(host: str, port: int, path: str, count: int, token: str) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    sem = asyncio.Semaphore(_CONCURRENCY)
    keep: list[Client] = []

    async def one() -> None:
        async with sem:
            done: asyncio.Future[bool] = loop.create_future()
            try:
                _, client = await loop.create_connection(
                    lambda: Client(stats, handshake, done), host, port
                )
                keep.append(client)
                async with asyncio.timeout(60):
                    ok = await done
            except (OSError, TimeoutError):
                ok = False
            if ok:
                stats.ready += 1
            else:
                stats.failed += 1

    await asyncio.gather(*(one() for _ in range(count)))
    print(f"ready {stats.ready} failed {stats.failed}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    print(orjson.dumps(stats.result()).decode(), flush=True)
    for client in keep:
        if client.transport is not None:
            client.transport.abort()


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port, path, count, token = sys.argv[1:6]
    asyncio.run(swarm(host, int(port), path, int(count), token))


if __name__ == "__main__":
    main()
