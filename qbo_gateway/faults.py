"""Every failure the gateway makes, and how QBO's own failures are read.

Exception tree (each carries its `GW-` name, the numeric fault `code` SDKs read, an HTTP
status and a safe message)::

    GatewayError                                          code  status
    ├── BadPath                 GW-BAD-PATH               9400  400
    ├── Unauthenticated         GW-UNAUTHENTICATED        9401  401
    ├── Forbidden               GW-FORBIDDEN              9403  403
    ├── UnknownRealm            GW-UNKNOWN-REALM          9404  404
    ├── MethodNotAllowed        GW-METHOD-NOT-ALLOWED     9405  405  (Allow)
    ├── ReconnectRequired       GW-RECONNECT-REQUIRED     9410  401
    ├── PayloadTooLarge         GW-PAYLOAD-TOO-LARGE      9413  413
    ├── RateLimited             GW-RATE-LIMITED           3001  429  (Retry-After)
    ├── ReadBudget              GW-READ-BUDGET            3001  429  (Retry-After)
    ├── CircuitOpen             GW-CIRCUIT-OPEN           9503  503  (Retry-After)
    ├── UpstreamUnavailable     GW-UPSTREAM-UNAVAILABLE   9502  502
    └── UpstreamTimeout         GW-UPSTREAM-TIMEOUT       9504  504

`GatewayError.code` is the `GW-` name (header `X-QBO-Gateway-Error`, logs, metric labels);
`GatewayError.fault_code` is the decimal string in the body's `Fault.Error[].code`. QBO's own
codes are numeric and SDKs call `int()` on them or switch on ranges, so the body must carry
a number; a refusal for the realm's budget reuses QBO's throttle code 3001, so code that
already backs off on QBO's throttle backs off on the gateway's. `FAULT_CODES` is the one
table; `gateway_fault()` builds every answer the gateway makes itself, including the ones
made outside a `GatewayError` (the ops listener's admin refusal, the parser's refusals).

Errors from other libraries (aiohttp, redis) are translated into this tree at the network
boundary (`raise UpstreamUnavailable(...) from exc`), so handlers only ever see these.

`classify()` reads an upstream answer (status + body in any of QBO's shapes: JSON in either
key casing, XML, HTML, a Fault inside a 200) into the one `FaultClass` that the breaker,
limits, retry policy and token path act on.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web


class GatewayError(Exception):
    """A refusal or failure made by the gateway itself, rendered as a QBO-shaped fault."""

    code = "GW-INTERNAL"
    status = 500
    default_message = "The gateway failed to handle the request"

    def __init__(
        self,
        detail: str = "",
        *,
        message: str | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.detail = detail or self.message
        self.retry_after = retry_after
        # A machine-readable sub-reason (e.g. which limit refused), used for metrics and
        # for the degraded-mode reason; never shown as a code.
        self.reason = reason
        super().__init__(f"{self.code}: {self.detail}")

    @property
    def fault_code(self) -> str:
        """The decimal `code` of the fault body (FAULT_CODES)."""
        return FAULT_CODES[self.code]


class BadPath(GatewayError):
    code, status, default_message = "GW-BAD-PATH", 400, "The request path is not allowed"


class Unauthenticated(GatewayError):
    code, status, default_message = "GW-UNAUTHENTICATED", 401, "A valid caller key is required"


class Forbidden(GatewayError):
    code, status, default_message = "GW-FORBIDDEN", 403, "The caller may not use this realm"


class UnknownRealm(GatewayError):
    code, status, default_message = (
        "GW-UNKNOWN-REALM",
        404,
        "The gateway has no tokens for this realm",
    )


class ReconnectRequired(GatewayError):
    code, status, default_message = (
        "GW-RECONNECT-REQUIRED",
        401,
        "Intuit refused the realm's refresh token; the realm must be reconnected",
    )


class MethodNotAllowed(GatewayError):
    code, status, default_message = (
        "GW-METHOD-NOT-ALLOWED",
        405,
        "QuickBooks Online's API does not use this method",
    )


class PayloadTooLarge(GatewayError):
    code, status, default_message = "GW-PAYLOAD-TOO-LARGE", 413, "The request body is too large"


class RateLimited(GatewayError):
    code, status, default_message = "GW-RATE-LIMITED", 429, "The realm's request budget is spent"


class ReadBudget(GatewayError):
    code, status, default_message = (
        "GW-READ-BUDGET",
        429,
        "The month's metered-read budget is nearly spent; background reads are paused",
    )


class CircuitOpen(GatewayError):
    code, status, default_message = (
        "GW-CIRCUIT-OPEN",
        503,
        "QuickBooks is failing for this realm; requests are paused",
    )


class UpstreamUnavailable(GatewayError):
    code, status, default_message = (
        "GW-UPSTREAM-UNAVAILABLE",
        502,
        "QuickBooks Online could not be reached",
    )


class UpstreamTimeout(GatewayError):
    code, status, default_message = (
        "GW-UPSTREAM-TIMEOUT",
        504,
        "QuickBooks Online did not answer in time",
    )


FAULT_CODES: dict[str, str] = {
    "GW-BAD-PATH": "9400",
    "GW-UNAUTHENTICATED": "9401",
    "GW-FORBIDDEN": "9403",
    "GW-UNKNOWN-REALM": "9404",
    "GW-METHOD-NOT-ALLOWED": "9405",
    "GW-RECONNECT-REQUIRED": "9410",
    "GW-PAYLOAD-TOO-LARGE": "9413",
    "GW-RATE-LIMITED": "3001",
    "GW-READ-BUDGET": "3001",
    "GW-CIRCUIT-OPEN": "9503",
    "GW-UPSTREAM-UNAVAILABLE": "9502",
    "GW-UPSTREAM-TIMEOUT": "9504",
    "GW-INTERNAL": "9500",
    "GW-REALM-EXISTS": "9409",  # the ops listener: importing over a stored realm, no force
    "GW-NOT-CONFIGURED": "9501",  # the ops listener: connect links without app credentials
    "GW-NOT-FOUND": "9404",  # the ops listener: no such route
}
"""`GW-` name -> the decimal `code` in the fault body."""


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fault_document(name: str, message: str, detail: str) -> dict[str, object]:
    """The QBO-shaped body for the gateway refusal called `name` (a key of FAULT_CODES)."""
    return {
        "Fault": {
            "Error": [{"Message": message, "Detail": detail, "code": FAULT_CODES[name]}],
            "type": "GatewayFault",
        },
        "time": iso_now(),
    }


def fault_body(error: GatewayError) -> dict[str, object]:
    return fault_document(error.code, error.message, error.detail)


def fault_headers(name: str, retry_after: float | None = None) -> dict[str, str]:
    out = {"X-QBO-Gateway-Error": name, "Cache-Status": "qbo-gateway; fwd=bypass"}
    if retry_after is not None:
        out["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return out


def gateway_fault(
    name: str,
    status: int,
    message: str,
    detail: str = "",
    *,
    headers: dict[str, str] | None = None,
    retry_after: float | None = None,
) -> web.Response:
    """A gateway-made answer for a refusal that is not raised as a GatewayError."""
    out = fault_headers(name, retry_after)
    if headers:
        out.update(headers)
    body = fault_document(name, message, detail or message)
    return web.json_response(body, status=status, headers=out)


def render_fault(error: GatewayError, headers: dict[str, str] | None = None) -> web.Response:
    """The QBO-shaped answer for a gateway error; SDKs parse it like any QBO fault."""
    out = fault_headers(error.code, error.retry_after)
    if headers:
        out.update(headers)
    return web.json_response(fault_body(error), status=error.status, headers=out)


class FaultClass(enum.Enum):
    """What an upstream answer means for the realm."""

    OK = "ok"
    THROTTLE = "throttle"  # 429 or fault 3001: cool the realm down, not a breaker failure
    AUTHENTICATION = "authentication"  # 401 / 3200: refresh once and replay
    AUTHORIZATION = "authorization"  # 3100: scope or environment; never retried
    UPSTREAM_FAILURE = "upstream_failure"  # 5xx, 6002, 10000, timeouts: counts against the realm
    CALLER_ERROR = "caller_error"  # other 4xx, 610, 5010, 6000: the caller's business


@dataclass(frozen=True)
class QboFault:
    codes: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()
    details: tuple[str, ...] = field(default_factory=tuple)


_THROTTLE_CODES = {"3001"}
_AUTHN_CODES = {"3200", "3201", "3202"}  # 3201/3202: token revoked or invalid, same path
_AUTHZ_CODES = {"3100"}
_UPSTREAM_CODES = {"6002", "10000"}
_XML_CODE = re.compile(rb"""<Error[^>]*\bcode\s*=\s*["']?(\d+)""", re.IGNORECASE)
_XML_MESSAGE = re.compile(rb"<Message>([^<]{0,500})</Message>", re.IGNORECASE)


# A success body is never parsed: only a Fault opening the document (QBO puts it first,
# optionally after "time") makes a 2xx a fault. Matching the opening bytes costs the same
# for a 200-byte read and a 30 MB report; "DefaultTaxCodeRef" and friends cost nothing.
_OPENING_FAULT = re.compile(
    rb"""\s*\{\s*(?:"time"\s*:\s*"[^"]{0,64}"\s*,\s*)?"fault"\s*:""", re.IGNORECASE
)


def _lower_keys(value: object, depth: int) -> object:
    if depth <= 0:
        return value
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v, depth - 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_keys(v, depth - 1) for v in value]
    return value


def _json_fault(body: bytes) -> QboFault | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    fault = next((v for k, v in doc.items() if str(k).lower() == "fault"), None)
    # Fault -> Error -> [item] -> fields: the only levels read, in either key casing.
    fault = _lower_keys(fault, 4)
    if not isinstance(fault, dict):
        return None
    errors = fault.get("error")
    if not isinstance(errors, list):
        errors = [errors] if isinstance(errors, dict) else []
    codes: list[str] = []
    messages: list[str] = []
    details: list[str] = []
    for item in errors:
        if isinstance(item, dict):
            codes.append(str(item.get("code", "")))
            messages.append(str(item.get("message", "")))
            details.append(str(item.get("detail", "")))
    return QboFault(tuple(codes), tuple(messages), tuple(details))


def parse_fault(body: bytes, *, success: bool = False) -> QboFault | None:
    """Find a QBO Fault in a body of any shape; None when there is none.

    `success`: the body came with a 2xx. Then only a Fault opening the document counts
    (the shape of QBO's Fault-in-200), so a success body is never parsed.
    """
    if not success and b"ault" not in body:  # "Fault", "fault", "FAULT"... in an error body
        return None
    opening = body[:256].lstrip()[:1]
    if opening in (b"{", b"["):
        if success and _OPENING_FAULT.match(body) is None:
            return None
        return _json_fault(body)
    if opening == b"<" and b"fault" in body[:4096].lower():
        xml_codes = tuple(m.decode() for m in _XML_CODE.findall(body[:65536]))
        xml_messages = tuple(m.decode(errors="replace") for m in _XML_MESSAGE.findall(body[:65536]))
        return QboFault(xml_codes, xml_messages, ())
    return None


def classify(status: int, body: bytes | None = None) -> FaultClass:
    """Read one upstream answer. `body` may be None when it was streamed and not kept."""
    fault = parse_fault(body, success=200 <= status < 300) if body else None
    codes = set(fault.codes) if fault else set()
    if status == 429 or codes & _THROTTLE_CODES:
        return FaultClass.THROTTLE
    if status == 401 or codes & _AUTHN_CODES:
        return FaultClass.AUTHENTICATION
    if codes & _AUTHZ_CODES:
        return FaultClass.AUTHORIZATION
    if status >= 500 or codes & _UPSTREAM_CODES:
        return FaultClass.UPSTREAM_FAILURE
    if status >= 400:
        return FaultClass.CALLER_ERROR
    if fault is not None and codes:
        # A 200 carrying a Fault: the caller's request failed, QBO itself is fine.
        return FaultClass.CALLER_ERROR
    return FaultClass.OK
