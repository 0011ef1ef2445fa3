"""The ops listener: probes, metrics, admin actions (health API and OAuth routes mount here).

Readiness is a map of named components, each with an async check; draining (SIGTERM)
flips it to 503 before any listener closes, so Kubernetes stops sending traffic first.
Liveness checks nothing external: a Redis outage must never get a healthy pod killed.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from qbo_gateway.faults import GatewayError, gateway_fault, render_fault

log = structlog.get_logger(__name__)

ComponentCheck = Callable[[], Awaitable["ComponentState"]]


@dataclass(frozen=True)
class ComponentState:
    ok: bool
    detail: str = ""
    warning: str | None = None  # shown in ?verbose; does not fail readiness


class Readiness:
    def __init__(self) -> None:
        self.draining = False
        self._checks: dict[str, ComponentCheck] = {}

    def add(self, name: str, check: ComponentCheck) -> None:
        self._checks[name] = check

    async def evaluate(self) -> tuple[bool, dict[str, dict[str, object]]]:
        report: dict[str, dict[str, object]] = {}
        ready = not self.draining
        for name, check in self._checks.items():
            try:
                state = await check()
            except Exception as exc:  # noqa: BLE001 - a failing check is a not-ready component
                state = ComponentState(False, f"check failed: {type(exc).__name__}")
            entry: dict[str, object] = {"ok": state.ok, "detail": state.detail}
            if state.warning:
                entry["warning"] = state.warning
            report[name] = entry
            ready = ready and state.ok
        report["draining"] = {
            "ok": not self.draining,
            "detail": "draining" if self.draining else "",
        }
        return ready, report


def admin_authorized(request: web.Request, admin_token: str | None) -> bool:
    if not admin_token:
        return False
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(presented.strip().encode(), admin_token.encode())


def admin_refusal(admin_token: str | None) -> web.Response:
    detail = (
        "Admin actions are disabled: QBO_ADMIN_TOKEN is not set"
        if not admin_token
        else "Send 'Authorization: Bearer <QBO_ADMIN_TOKEN>'"
    )
    return gateway_fault(
        "GW-UNAUTHENTICATED",
        401,
        "Admin token required",
        detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


RefreshFn = Callable[[str], Awaitable[dict[str, object]]]


def build_ops_app(
    *,
    readiness: Readiness,
    registry: CollectorRegistry,
    admin_token: str | None,
    force_refresh: RefreshFn | None = None,
) -> web.Application:
    app = web.Application()

    async def livez(_request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        ready, report = await readiness.evaluate()
        status = 200 if ready else 503
        if "verbose" in request.query:
            return web.json_response(
                {"status": "ready" if ready else "not_ready", "components": report},
                status=status,
            )
        return web.json_response({"status": "ready" if ready else "not_ready"}, status=status)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def refresh(request: web.Request) -> web.Response:
        if not admin_authorized(request, admin_token):
            return admin_refusal(admin_token)
        realm_id = request.match_info["realm_id"]
        if force_refresh is None:
            return web.json_response({"error": "token refresh is not available"}, status=501)
        try:
            result = await force_refresh(realm_id)
        except GatewayError as err:
            return render_fault(err)
        log.info("admin_refresh", realm_id=realm_id)
        return web.json_response(result)

    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health/metrics/prometheus", metrics)
    app.router.add_get("/integrations/qbo/health/metrics/prometheus", metrics)
    app.router.add_post(r"/admin/realms/{realm_id:\d+}/refresh", refresh)
    return app
