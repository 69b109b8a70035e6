"""The gateway application factory."""

from __future__ import annotations

from aiohttp import web

from gateway import health
from gateway.keys import SETTINGS
from schemas.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.ingest_max_bytes)
    app[SETTINGS] = settings
    app.add_routes(health.routes)
    return app
