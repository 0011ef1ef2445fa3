"""How an injected fault rule is answered, for the Accounting API and the token endpoint.

`faults.py` decides which rule a request consumes; this module turns that rule into the
response Intuit would have sent (or a dropped connection), with the exact statuses, codes and
bodies the gateway has to recognise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from qbo_gateway.simulator.answers import (
    drop,
    fault,
    iso,
    oauth_error,
    unauthorized,
    xml_fault,
)
from qbo_gateway.simulator.faults import FaultRule


def token_fault(request: web.Request, rule: FaultRule) -> web.Response:
    if rule.kind == "disconnect":
        return drop(request)
    if rule.kind == "invalid_client":
        return oauth_error(rule.status or 401, "invalid_client")
    if rule.kind == "invalid_grant":
        return oauth_error(rule.status or 400, "invalid_grant")
    response = oauth_error(rule.status or 500, "server_error")
    if rule.retry_after is not None:
        response.headers["Retry-After"] = rule.retry_after
    return response


def api_fault(request: web.Request, rule: FaultRule, tid: str, now: float) -> web.Response:
    if rule.kind == "disconnect":
        return drop(request)
    answer = _API_ANSWERS.get(rule.kind, _fault_in_200)
    response = answer(rule, now)
    if rule.retry_after is not None:
        response.headers["Retry-After"] = rule.retry_after
    response.headers["intuit_tid"] = tid
    return response


def _unauthorized(_rule: FaultRule, now: float) -> web.Response:
    return unauthorized(now)


def _throttle(rule: FaultRule, now: float) -> web.Response:
    status = rule.status or 429
    message = f"message=ThrottleExceeded; errorCode=003001; statusCode={status}"
    detail = "The request limit was reached."
    if rule.xml:
        return web.Response(
            status=status,
            text=xml_fault("3001", message, detail, now),
            content_type="application/xml",
        )
    return fault(status, "3001", message, detail, "ThrottleExceeded", now)


def _server_error(rule: FaultRule, now: float) -> web.Response:
    return fault(
        rule.status or 500,
        "10000",
        "An application error has occurred while processing your request",
        "System Failure Error: An unexpected error occurred while accessing or saving "
        "your data. Please wait a few minutes and try again.",
        "SystemFault",
        now,
    )


def _server_error_html(rule: FaultRule, now: float) -> web.Response:
    status = rule.status or 502
    reason = {502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Error")
    return web.Response(
        status=status,
        text=f"<html><head><title>{status} {reason}</title></head>"
        f"<body><h1>{status} {reason}</h1></body></html>",
        content_type="text/html",
    )


def _gateway_timeout(rule: FaultRule, now: float) -> web.Response:
    return fault(
        rule.status or 504,
        "6002",
        "message=Gateway Timeout; errorCode=006002; statusCode=504",
        "The request timed out.",
        "SystemFault",
        now,
    )


def _forbidden(rule: FaultRule, now: float) -> web.Response:
    return fault(
        rule.status or 403,
        "3100",
        "message=ApplicationAuthorizationFailed; errorCode=003100; statusCode=403",
        "",
        "SECURITY",
        now,
    )


def _leaky_headers(_rule: FaultRule, now: float) -> web.Response:
    response = web.json_response({"QueryResponse": {}, "time": iso(now)})
    response.headers["Authorization"] = "Bearer leaked-upstream-credential"
    response.headers["Proxy-Authorization"] = "Basic bGVha2VkOmNyZWRlbnRpYWw="
    response.headers["Set-Cookie"] = "qbo_session=leaked-session-cookie; Path=/"
    return response


def _fault_in_200(rule: FaultRule, now: float) -> web.Response:
    return fault(
        rule.status or 200,
        "6000",
        "A business validation error has occurred while processing your request",
        "Business Validation Error: simulated.",
        "ValidationFault",
        now,
    )


# How each kind of API fault is answered ("disconnect" drops the connection instead).
_API_ANSWERS: dict[str, Callable[[FaultRule, float], web.Response]] = {
    "unauthorized": _unauthorized,
    "throttle": _throttle,
    "server_error": _server_error,
    "server_error_html": _server_error_html,
    "gateway_timeout": _gateway_timeout,
    "forbidden": _forbidden,
    "leaky_headers": _leaky_headers,
    "fault_in_200": _fault_in_200,
}


async def streamed_fault(request: web.Request, rule: FaultRule, tid: str) -> web.StreamResponse:
    """A 200 whose body breaks off ("broken_body") or arrives slowly ("slow_body")."""
    response = web.StreamResponse(headers={"Content-Type": "application/json", "intuit_tid": tid})
    response.enable_chunked_encoding()
    await response.prepare(request)
    rows = ",".join('{"Id":"' + str(i) + '","Name":"row"}' for i in range(200))
    if rule.kind == "broken_body":
        await response.write(b'{"QueryResponse":{"Item":[' + rows.encode())
        drop(request)  # no terminating chunk: the client sees the body end early
        return response
    parts = [b'{"QueryResponse":{"Item":[', rows.encode(), b"]},", b'"time":', b'"x"}']
    try:
        for part in parts:
            await asyncio.sleep(rule.delay)
            await response.write(part)
        await response.write_eof()
    except ConnectionError:
        pass  # the client gave up on the slow body (a gateway's deadline): nothing to do
    return response
