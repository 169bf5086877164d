"""Bench helper process: the floor, a bare aiohttp server that reads the body and returns 200.

Served the way ``xdm-bridge serve`` serves (``web.run_app``, no access log), so the bench can
measure what aiohttp and the load generator cost by themselves on this machine.
"""

from __future__ import annotations

import argparse
import sys

from aiohttp import web


async def events(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=200)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/slack/events", events)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
