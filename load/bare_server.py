"""A bare aiohttp server that answers every POST with 202: the gateway's baseline in benchmarks.

It reads the body (as the gateway must) and returns a small JSON answer, nothing else.
Usage: python -m load.bare_server PORT
"""

from __future__ import annotations

import sys

from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"status": "accepted"}, status=202)


def main() -> None:
    app = web.Application()
    app.router.add_post("/{tail:.*}", accept)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
