"""Typed application keys, in one module so every route group agrees on them."""

from __future__ import annotations

from aiohttp import web

from schemas.settings import Settings

__all__ = ["SETTINGS"]

SETTINGS = web.AppKey("settings", Settings)
