"""What can go wrong when a service calls the gateway, as exception types.

The gateway's `GW-` codes (header `X-QBO-Gateway-Error`) and QBO's own faults each map to one
class, all under `QBOGatewayError`, so a service catches `RateLimited` or `ReconnectRequired`
instead of parsing bodies. Standalone like `client`: standard library only.
"""

from __future__ import annotations

from typing import Any

# ---- exceptions ------------------------------------------------------------------------


class QBOGatewayError(Exception):
    """Anything that kept a call from returning QBO's answer.

    `status` is the HTTP status (None when no answer came), `code` the `GW-` code or QBO's
    fault code, `request_id` the gateway's `X-Request-Id` (quote it when asking for help).
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
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
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
    """GW-BAD-PATH: the path or realm id was refused."""


class Unauthenticated(GatewayFault):
    """GW-UNAUTHENTICATED: callers are configured and the key is missing or wrong."""


class Forbidden(GatewayFault):
    """GW-FORBIDDEN: this caller may not use this realm."""


class UnknownRealm(GatewayFault):
    """GW-UNKNOWN-REALM: the gateway holds no tokens for this realm."""


class ReconnectRequired(GatewayFault):
    """GW-RECONNECT-REQUIRED: Intuit refused the refresh token; a person must reconnect."""


class PayloadTooLarge(GatewayFault):
    """GW-PAYLOAD-TOO-LARGE: the request body is over the gateway's limit."""


class RateLimited(GatewayFault):
    """The realm's budget is spent or QBO throttled it; try again after `retry_after` s."""


class CircuitOpen(GatewayFault):
    """GW-CIRCUIT-OPEN: QBO is failing for this realm; calls pause for `retry_after` s."""


class UpstreamUnavailable(GatewayFault):
    """GW-UPSTREAM-UNAVAILABLE: the gateway could not reach QBO."""


class UpstreamTimeout(GatewayFault):
    """GW-UPSTREAM-TIMEOUT: QBO did not answer within the gateway's deadline."""


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
    "GW-RECONNECT-REQUIRED": ReconnectRequired,
    "GW-PAYLOAD-TOO-LARGE": PayloadTooLarge,
    "GW-RATE-LIMITED": RateLimited,
    "GW-CIRCUIT-OPEN": CircuitOpen,
    "GW-UPSTREAM-UNAVAILABLE": UpstreamUnavailable,
    "GW-UPSTREAM-TIMEOUT": UpstreamTimeout,
}
