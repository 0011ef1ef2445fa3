"""How an injected fault rule is answered, for the Accounting API and the token endpoint.

`faults.py` decides which rule a request consumes; this module turns that rule into the
response Intuit would have sent (or a dropped connection), with the exact statuses, codes and
bodies the gateway has to recognise.
"""

from __future__ import annotations

from aiohttp import web

from qbo_gateway.simulator.answers import drop, fault, oauth_error, unauthorized, xml_fault
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
    kind = rule.kind
    if kind == "disconnect":
        return drop(request)
    if kind == "unauthorized":
        response = unauthorized(now)
    elif kind == "throttle":
        status = rule.status or 429
        message = f"message=ThrottleExceeded; errorCode=003001; statusCode={status}"
        detail = "The request limit was reached."
        if rule.xml:
            response = web.Response(
                status=status,
                text=xml_fault("3001", message, detail, now),
                content_type="application/xml",
            )
        else:
            response = fault(status, "3001", message, detail, "ThrottleExceeded", now)
    elif kind == "server_error":
        response = fault(
            rule.status or 500,
            "10000",
            "An application error has occurred while processing your request",
            "System Failure Error: An unexpected error occurred while accessing or saving "
            "your data. Please wait a few minutes and try again.",
            "SystemFault",
            now,
        )
    elif kind == "server_error_html":
        status = rule.status or 502
        reason = {502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Error")
        response = web.Response(
            status=status,
            text=f"<html><head><title>{status} {reason}</title></head>"
            f"<body><h1>{status} {reason}</h1></body></html>",
            content_type="text/html",
        )
    elif kind == "gateway_timeout":
        response = fault(
            rule.status or 504,
            "6002",
            "message=Gateway Timeout; errorCode=006002; statusCode=504",
            "The request timed out.",
            "SystemFault",
            now,
        )
    elif kind == "forbidden":
        response = fault(
            rule.status or 403,
            "3100",
            "message=ApplicationAuthorizationFailed; errorCode=003100; statusCode=403",
            "",
            "SECURITY",
            now,
        )
    else:  # fault_in_200
        response = fault(
            rule.status or 200,
            "6000",
            "A business validation error has occurred while processing your request",
            "Business Validation Error: simulated.",
            "ValidationFault",
            now,
        )
    if rule.retry_after is not None:
        response.headers["Retry-After"] = rule.retry_after
    response.headers["intuit_tid"] = tid
    return response
