"""The baseline of load/bench_ws.py: a bare aiohttp WebSocket broadcast, what one writes in
twenty lines. It XREADs `ia:metrics`, and sends every update to every socket with sequential
awaited `send_str`; any client message is taken as a subscribe and answered as the gateway
does. At SIGTERM it prints, as one JSON line, each update's time from append to last send.

    python -m load.ws_bare PORT REDIS_URL
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis

from schemas.streams import METRICS_STREAM

__all__ = ["bare"]


async def bare(port: int, redis_url: str) -> None:
    """A bare aiohttp WebSocket broadcast: accept, answer subscribe, send every update to
    every socket with sequential awaited sends."""
    sockets: set[web.WebSocketResponse] = set()
    redis = Redis.from_url(redis_url)
    fanout_ms: list[float] = []  # append to last send, per update; printed at exit

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.add(ws)
        try:
            async for _ in ws:  # any message is a subscribe: answer as the gateway does
                await ws.send_str('{"type":"subscribed","data":{}}')
                await ws.send_str('{"type":"metrics_update","data":{"snapshot":true}}')
        finally:
            sockets.discard(ws)
        return ws

    async def broadcast(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            last: Any = (await redis.xrevrange(METRICS_STREAM, count=1) or [(b"0-0", {})])[0][0]
            while True:
                reply: Any = await redis.xread({METRICS_STREAM: last}, block=1000)
                for _, entries in reply or ():
                    for last, fields in entries:
                        u = orjson.loads(fields[b"updates"])[0]
                        data = {"userId": u["userId"], "metrics": {u["metric"]: u["value"]}}
                        message = {"type": "metrics_update", "id": last.decode(), "data": data}
                        payload = orjson.dumps(message).decode()
                        for ws in list(sockets):
                            await ws.send_str(payload)
                        ms, _, _ = last.decode().partition("-")
                        fanout_ms.append(time.time() * 1000 - int(ms))

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        await redis.aclose()

    app = web.Application()
    app.router.add_get("/", handler)
    app.cleanup_ctx.append(broadcast)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    print(orjson.dumps({"fanout_ms": fanout_ms}).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(bare(int(sys.argv[1]), sys.argv[2]))
