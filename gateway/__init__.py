"""The aiohttp gateway: ingest, analytics API, WebSocket fan-out, probes."""
