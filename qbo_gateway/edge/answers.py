"""Answers aiohttp's router would give in plain text, given as the gateway's faults instead.

A path the router cannot match (a `%0a` decoded into the path, a `CONNECT host:port`
target) got aiohttp's plain-text 404 without `X-Request-Id`. The proxy also refuses, before
anything else, every method QBO's API does not use: only `GET` and `POST` ever reach QBO
with a realm's token.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from qbo_gateway.faults import (
    BadPath,
    GatewayError,
    MethodNotAllowed,
    PayloadTooLarge,
    gateway_fault,
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


def refuse_method(request: web.BaseRequest) -> web.Response | None:
    """The proxy's refusal of a method QBO does not use; None for GET and POST.

    The proxy's handler asks this first (no middleware: a middleware costs every request a
    wrapper call and aiohttp's request-copying around it).
    """
    if request.method in FORWARDED_METHODS:
        return None
    refusal = method_not_allowed(request.method)
    return render_fault(refusal, {"Allow": ALLOW, "X-Request-Id": _rid(request)})


def proxy_refusal(request: web.BaseRequest, exc: web.HTTPException) -> web.Response:
    """aiohttp's refusal on the proxy listener (no route, body too large...) as a fault."""
    refused = refuse_method(request)
    if refused is not None:
        return refused
    return render_fault(_proxy_error(exc), {"X-Request-Id": _rid(request)})


def http_exception_fault(request: web.BaseRequest, exc: web.HTTPException) -> web.Response:
    """aiohttp's refusal (no route, wrong method, bad Expect...) as the gateway's fault."""
    headers = {"X-Request-Id": request_id_of(request.headers)}
    if exc.status == 405:
        headers["Allow"] = exc.headers.get("Allow", "")
        return gateway_fault(
            "GW-METHOD-NOT-ALLOWED", 405, "The method is not allowed", headers=headers
        )
    if exc.status == 404:
        return gateway_fault("GW-NOT-FOUND", 404, "No such route", headers=headers)
    if exc.status < 500:
        return gateway_fault("GW-BAD-PATH", exc.status, exc.reason, headers=headers)
    return gateway_fault("GW-INTERNAL", 500, "The gateway failed", headers=headers)


def ops_edge() -> Middleware:
    """The ops listener's router refusals (no such route, wrong method) as faults; an
    `X-Request-Id` on every answer."""

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return http_exception_fault(request, exc)
        if not response.prepared:
            response.headers.setdefault("X-Request-Id", _rid(request))
        return response

    return edge


def method_not_allowed(method: str) -> GatewayError:
    return MethodNotAllowed(f"Only {ALLOW} are forwarded to QuickBooks Online")


def _rid(request: web.BaseRequest) -> str:
    return request_id_of(request.headers)
