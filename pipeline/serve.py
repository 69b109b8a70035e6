"""Run the long-lived processes until SIGTERM or SIGINT, then shut down in phases:
stop reading, finish and acknowledge the batch in hand, close sockets, exit 0."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from aiohttp import web

from gateway.app import create_app
from gateway.http.bodies import SERVER_OPTIONS
from gateway.ops.perf import PERF_IN_WORKER, gateway_totals
from gateway.ws.server import start_ws_site
from pipeline.worker import ALL_GROUPS, run_worker
from schemas.settings import Settings

__all__ = ["serve"]

log = logging.getLogger(__name__)

# Long enough for in-flight requests to finish, short enough for an orchestrator's grace period.
SHUTDOWN_GRACE_SECONDS = 10.0


async def serve(
    settings: Settings, *, gateway: bool, worker: bool, groups: Sequence[str] = ALL_GROUPS
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    runner: web.AppRunner | None = None
    ws_runner: web.AppRunner | None = None
    if gateway:
        app = create_app(settings)
        # One process, one performance series: the worker samples both sides (kind `all`).
        app[PERF_IN_WORKER] = worker
        runner = web.AppRunner(
            app, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, access_log=None, **SERVER_OPTIONS
        )
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_address=True)
        await site.start()
        log.info(
            "gateway listening", extra={"host": settings.http_host, "port": settings.http_port}
        )
        if settings.ws_enabled:
            ws_runner = await start_ws_site(app, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    try:
        if worker:
            # A worker beside a gateway shares the gateway's /metrics; alone it serves its own.
            await run_worker(
                settings,
                stop,
                metrics_port=None if gateway else settings.metrics_port,
                groups=groups,
                gateway_totals=(lambda: gateway_totals(settings)) if gateway else None,
            )
        else:
            await stop.wait()
        log.info("shutdown requested")
    finally:
        if ws_runner is not None:
            await ws_runner.cleanup()  # first: it shares the gateway app's fan-out
        if runner is not None:
            await runner.cleanup()
        log.info("stopped")
