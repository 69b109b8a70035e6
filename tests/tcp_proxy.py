"""A TCP proxy on loopback that a test can cut: the way to break a real connection to a real
server without mocking either side.

`cut()` stops listening (new connections are refused: ECONNREFUSED) and aborts every
connection in flight on both sides (the client sees a reset, the server a vanished peer).
`restore()` listens on the same port again.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["TcpProxy"]

_CHUNK = 65536


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0  # the listening port once started; kept across cut() and restore()
        self.accepted = 0  # connections accepted and forwarded, over the proxy's life
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._sessions: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def connections(self) -> int:
        """Connections currently forwarded."""
        return len(self._sessions)

    async def start(self) -> None:
        """Listen (again), on the port of the previous start if there was one."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    restore = start

    async def cut(self) -> None:
        """Refuse new connections and kill every existing one."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in list(self._writers):
            w.transport.abort()
        if server is not None:
            await server.wait_closed()
        await self._settle()

    async def close(self) -> None:
        await self.cut()

    async def _settle(self) -> None:
        """Let every session notice its sockets were aborted and finish."""
        sessions = list(self._sessions)
        if not sessions:
            return
        _, pending = await asyncio.wait(sessions, timeout=5)
        for t in pending:
            t.cancel()
        for t in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._server is None:  # accepted just before a cut
            writer.transport.abort()
            return
        self._sessions.add(task)
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return
            self._writers.add(up_writer)
            if not self.listening:  # cut while connecting upstream
                return
            self.accepted += 1
            pipes = [
                asyncio.create_task(self._pipe(reader, up_writer)),
                asyncio.create_task(self._pipe(up_reader, writer)),
            ]
            try:
                # When either direction ends the session is over: close both sides.
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for p in pipes:
                    p.cancel()
                for p in pipes:
                    with contextlib.suppress(asyncio.CancelledError):
                        await p
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._sessions.discard(task)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):  # ConnectionResetError and friends: a cut
            while data := await src.read(_CHUNK):
                dst.write(data)
                await dst.drain()
