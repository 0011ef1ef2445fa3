"""Intuit-shaped answers: fault bodies, the 401 body, OAuth errors, a dropped connection.

The gateway classifies QBO's answers by their exact shapes (a `Fault` object, the odd
lower-case 401 body, an XML fault, an OAuth `error`), so every handler builds them here, once,
from Intuit's documented (and observed) answers.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from qbo_gateway.simulator.records import JSONDict


class FaultAnswer(Exception):
    """An entity operation failed with a QBO fault (status + body)."""

    def __init__(self, status: int, body: JSONDict) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds")


def json_answer(status: int, body: JSONDict) -> web.Response:
    return web.json_response(body, status=status)


def oauth_error(status: int, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status)


def fault_body(
    code: str, message: str, detail: str, now: float, kind: str = "ValidationFault"
) -> JSONDict:
    return {
        "Fault": {
            "Error": [{"Message": message, "Detail": detail, "code": code, "element": ""}],
            "type": kind,
        },
        "time": iso(now),
    }


def fault(status: int, code: str, message: str, detail: str, kind: str, now: float) -> web.Response:
    return json_answer(status, fault_body(code, message, detail, now, kind))


def not_found(now: float) -> FaultAnswer:
    return FaultAnswer(
        400,
        fault_body(
            "610",
            "Object Not Found",
            "Object Not Found : Something you're trying to use has been made inactive. "
            "Check the fields with accounts, customers, items, vendors or employees.",
            now,
        ),
    )


def unauthorized(now: float) -> web.Response:
    body: JSONDict = {
        "warnings": None,
        "intuitObject": None,
        "fault": {
            "error": [
                {
                    "message": "message=AuthenticationFailed; errorCode=003200; statusCode=401",
                    "detail": "Token expired or invalid",
                    "code": "3200",
                    "element": None,
                }
            ],
            "type": "AUTHENTICATION",
        },
        "report": None,
        "queryResponse": None,
        "batchItemResponse": [],
        "attachableResponse": [],
        "syncErrorResponse": None,
        "requestId": None,
        "time": int(now * 1000),
        "status": None,
        "cdcresponse": [],
    }
    return web.json_response(
        body, status=401, headers={"WWW-Authenticate": 'Bearer realm="Intuit"'}
    )


def xml_fault(code: str, message: str, detail: str, now: float) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f'<IntuitResponse xmlns="http://schema.intuit.com/finance/v3" time="{iso(now)}">'
        f'<Fault type="ServiceFault"><Error code="{code}"><Message>{message}</Message>'
        f"<Detail>{detail}</Detail></Error></Fault></IntuitResponse>"
    )


def drop(request: web.Request) -> web.Response:
    """Close the connection so the client gets no response at all.

    The returned response is never delivered: aiohttp drops writes to an aborted transport.
    """
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=204)
