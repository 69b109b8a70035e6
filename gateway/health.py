"""Probes. `/health` is liveness only: it must answer even when Redis or TimescaleDB are down,
so an orchestrator restarts the process for its own faults, not for a dependency's."""

from __future__ import annotations

import time

from aiohttp import web

__all__ = ["routes"]

routes = web.RouteTableDef()
_STARTED = time.monotonic()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response(
        {"status": "ok", "uptime_seconds": round(time.monotonic() - _STARTED, 3)}
    )
