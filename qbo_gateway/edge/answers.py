"""Answers aiohttp's router would give in plain text, given as the gateway's faults instead.

A path the router cannot match (a `%0a` decoded into the path, a `CONNECT host:port`
target) got aiohttp's plain-text 404 without `X-Request-Id`. The proxy's middleware also
refuses, before any handler runs, every method QBO's API does not use: only `GET` and
`POST` ever reach QBO with a realm's token.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from qbo_gateway.faults import (
    BadPath,
    GatewayError,
    MethodNotAllowed,
    PayloadTooLarge,
    render_fault,
)
from qbo_gateway.request_ids import request_id_of

FORWARDED_METHODS = ("GET", "POST")
ALLOW = ", ".join(FORWARDED_METHODS)


def _proxy_error(exc: web.HTTPException) -> GatewayError:
    if exc.status == 413:
        return PayloadTooLarge("The request body is too large")
    if exc.status < 500:
        return BadPath("The request target is not a QuickBooks Online API path")
    return GatewayError("The gateway failed to handle the request")


def proxy_edge() -> Middleware:
    """Refuse methods QBO does not use; turn the router's refusals into faults."""

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in FORWARDED_METHODS:
            refusal = method_not_allowed(request.method)
            return render_fault(refusal, {"Allow": ALLOW, "X-Request-Id": _rid(request)})
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return render_fault(_proxy_error(exc), {"X-Request-Id": _rid(request)})

    return edge


def method_not_allowed(method: str) -> GatewayError:
    return MethodNotAllowed(f"Only {ALLOW} are forwarded to QuickBooks Online")


def _rid(request: web.Request) -> str:
    return request_id_of(request.headers)
