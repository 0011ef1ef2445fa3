"""The baseline: the least an aiohttp proxy can do (one ClientSession, read, answer).

No logging, no checks: what the gateway is compared against, run as its own process.

    .venv/bin/python bench/bare_proxy.py http://127.0.0.1:8080 9000
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

_PASSED = ("Content-Type", "intuit_tid")


def make_app(upstream: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession(upstream)
        yield
        await app["session"].close()

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def passthrough(request: web.Request) -> web.Response:
        session: aiohttp.ClientSession = request.app["session"]
        async with session.get(request.path_qs) as upstream_response:
            body = await upstream_response.read()
            headers = {
                k: upstream_response.headers[k] for k in _PASSED if k in upstream_response.headers
            }
            return web.Response(status=upstream_response.status, body=body, headers=headers)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/ready", ready)
    app.router.add_get("/{tail:.*}", passthrough)
    return app


if __name__ == "__main__":
    web.run_app(
        make_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None
    )
