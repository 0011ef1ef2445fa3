"""Who may read the JSON health routes: anyone, or only holders of QBO_OPS_READ_TOKEN.

Those routes name every realm and show its token expiry, reconnect state and errors. The
ops listener binds 0.0.0.0 by default (the kubelet probes it), so with `QBO_OPS_READ_TOKEN`
set they need `Authorization: Bearer <read token or admin token>`. Probes, metrics and the
status page (no realm ids, no secrets) stay open: a kubelet or Prometheus has no token.
The guard is one middleware over the routes' paths, so the handlers stay unaware of it.
"""

from __future__ import annotations

import hmac
import re
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from qbo_gateway.faults import Unauthenticated, render_fault
from qbo_gateway.settings import Settings, is_loopback

_GUARDED = re.compile(
    r"^(?:/integrations/qbo)?/health/(?:summary|dashboard|alerts|business/[^/]*)$"
)
_GUARDED_METHODS = frozenset({"GET", "HEAD"})


def _bearer(request: web.Request) -> bytes | None:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    return presented.strip().encode()


def read_allowed(request: web.Request, tokens: tuple[str, ...]) -> bool:
    """True when the request bears one of `tokens` (each compared in constant time)."""
    presented = _bearer(request)
    if presented is None:
        return False
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented, token.encode())
    return matched


def read_guard(read_token: str | None, admin_token: str | None) -> Middleware:
    """The middleware; with no read token it lets every request through."""
    tokens = tuple(t for t in (read_token, admin_token) if t)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            read_token
            and request.method in _GUARDED_METHODS
            and _GUARDED.match(request.path)
            and not read_allowed(request, tokens)
        ):
            refusal = Unauthenticated(
                "Send 'Authorization: Bearer <QBO_OPS_READ_TOKEN or QBO_ADMIN_TOKEN>'",
                message="A read token is required for this health route",
            )
            request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
            return render_fault(
                refusal, {"WWW-Authenticate": "Bearer", "X-Request-Id": request_id[:128]}
            )
        return await handler(request)

    return guard


def open_health_warning(settings: Settings) -> str | None:
    """What to tell operators when realm details are open to anyone who reaches the port."""
    if settings.ops_read_token is not None and settings.ops_read_token.get_secret_value():
        return None
    if is_loopback(settings.ops_host):
        return None
    return (
        f"QBO_OPS_READ_TOKEN is unset and the ops listener binds {settings.ops_host}: "
        "/health/summary, /health/dashboard, /health/business/... and /health/alerts "
        "show every realm id and its token state to anyone who can reach the port"
    )
