"""What can go wrong when a service calls the gateway, as exception types.

The gateway's refusals (named `GW-...` in the header `X-QBO-Gateway-Error`, numbered in the
fault body's `code`, `Fault.type` "GatewayFault") and QBO's own faults each map to one class,
all under `QBOGatewayError`, so a service catches `RateLimited` or `ReconnectRequired`
instead of parsing bodies. The header name is read first; when something on the way dropped
the header, the numeric code of a "GatewayFault" picks the class. Standalone like `client`:
standard library only.
"""

from __future__ import annotations

from typing import Any

# ---- exceptions ------------------------------------------------------------------------


__all__ = [
    "BadRequest",
    "CircuitOpen",
    "Forbidden",
    "GatewayFault",
    "GatewayUnreachable",
    "HealthUnavailable",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "QBOFault",
    "QBOGatewayError",
    "QBOThrottled",
    "RateLimited",
    "ReadBudget",
    "ReconnectRequired",
    "Unauthenticated",
    "UnknownRealm",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class QBOGatewayError(Exception):
    """Anything that kept a call from returning QBO's answer.

    `status` is the HTTP status (None when no answer came), `code` the gateway's `GW-` name
    or QBO's fault code, `fault_code` the numeric code in the fault body (for QBO's faults the
    same as `code`), `request_id` the gateway's `X-Request-Id` (quote it when asking for help).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        detail: str = "",
        retry_after: float | None = None,
        request_id: str | None = None,
        intuit_tid: str | None = None,
        fault_code: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.fault_code = fault_code if fault_code is not None else code
        self.detail = detail
        self.retry_after = retry_after
        self.request_id = request_id
        self.intuit_tid = intuit_tid
        super().__init__(f"{code}: {message}" if code else message)


class GatewayUnreachable(QBOGatewayError):
    """The gateway itself could not be reached or did not answer in time."""


class HealthUnavailable(QBOGatewayError):
    """The ops listener answered, but not with the health API (wrong URL, not mounted)."""


class GatewayFault(QBOGatewayError):
    """A refusal made by the gateway (an `X-QBO-Gateway-Error` code without its own class)."""


class BadRequest(GatewayFault):
    """GW-BAD-PATH (9400): the path, realm id or request was refused."""


class MethodNotAllowed(GatewayFault):
    """GW-METHOD-NOT-ALLOWED (9405): QBO's API uses only GET and POST."""


class Unauthenticated(GatewayFault):
    """GW-UNAUTHENTICATED (9401): callers are configured and the key is missing or wrong."""


class Forbidden(GatewayFault):
    """GW-FORBIDDEN (9403): this caller may not use this realm."""


class UnknownRealm(GatewayFault):
    """GW-UNKNOWN-REALM (9404): the gateway holds no tokens for this realm."""


class ReconnectRequired(GatewayFault):
    """GW-RECONNECT-REQUIRED (9410): Intuit refused the refresh token; a person must reconnect."""


class PayloadTooLarge(GatewayFault):
    """GW-PAYLOAD-TOO-LARGE (9413): the request body is over the gateway's limit."""


class RateLimited(GatewayFault):
    """GW-RATE-LIMITED (3001): the realm's budget is spent or QBO throttled it; try again
    after `retry_after` s."""


class ReadBudget(RateLimited):
    """GW-READ-BUDGET (3001): the month's metered-read guard refused a background read."""


class CircuitOpen(GatewayFault):
    """GW-CIRCUIT-OPEN (9503): QBO is failing for this realm; calls pause for `retry_after` s."""


class UpstreamUnavailable(GatewayFault):
    """GW-UPSTREAM-UNAVAILABLE (9502): the gateway could not reach QBO."""


class UpstreamTimeout(GatewayFault):
    """GW-UPSTREAM-TIMEOUT (9504): QBO did not answer within the gateway's deadline."""


class QBOFault(QBOGatewayError):
    """QBO's own fault, passed through the gateway: `code`, `message`, `detail`, `intuit_tid`.

    `errors` holds every error of the fault (QBO may send several), each as
    `{"code", "message", "detail"}`; the attributes describe the first.
    """

    def __init__(self, message: str, *, errors: tuple[dict[str, str], ...] = (), **kw: Any) -> None:
        super().__init__(message, **kw)
        self.errors = errors


class QBOThrottled(RateLimited, QBOFault):
    """QBO itself throttled the realm (HTTP 429 or fault 3001) and the gateway passed it on."""


GW_CODES: dict[str, type[GatewayFault]] = {
    "GW-BAD-PATH": BadRequest,
    "GW-UNAUTHENTICATED": Unauthenticated,
    "GW-FORBIDDEN": Forbidden,
    "GW-UNKNOWN-REALM": UnknownRealm,
    "GW-METHOD-NOT-ALLOWED": MethodNotAllowed,
    "GW-RECONNECT-REQUIRED": ReconnectRequired,
    "GW-PAYLOAD-TOO-LARGE": PayloadTooLarge,
    "GW-RATE-LIMITED": RateLimited,
    "GW-READ-BUDGET": ReadBudget,
    "GW-CIRCUIT-OPEN": CircuitOpen,
    "GW-UPSTREAM-UNAVAILABLE": UpstreamUnavailable,
    "GW-UPSTREAM-TIMEOUT": UpstreamTimeout,
}
"""The `X-QBO-Gateway-Error` name -> its class."""

FAULT_CODE_NAMES: dict[str, str] = {
    "9400": "GW-BAD-PATH",
    "9401": "GW-UNAUTHENTICATED",
    "9403": "GW-FORBIDDEN",
    "9404": "GW-UNKNOWN-REALM",
    "9405": "GW-METHOD-NOT-ALLOWED",
    "9410": "GW-RECONNECT-REQUIRED",
    "9413": "GW-PAYLOAD-TOO-LARGE",
    "3001": "GW-RATE-LIMITED",  # GW-READ-BUDGET shares it; only the header tells them apart
    "9503": "GW-CIRCUIT-OPEN",
    "9502": "GW-UPSTREAM-UNAVAILABLE",
    "9504": "GW-UPSTREAM-TIMEOUT",
}
"""A "GatewayFault" body's numeric code -> the `GW-` name, for when the header is missing."""
