"""The health API: JSON for operators, an HTML status page for clients.

Every route is served under `/health/...` and `/integrations/qbo/health/...` (the prefix
services used before the gateway). Reads are open on the ops listener; actions (ack,
start/stop, check) need `Authorization: Bearer <QBO_ADMIN_TOKEN>`, compared in constant
time; with no admin token configured every action answers 401. The status page itself is
built in `status_page`.
"""

from __future__ import annotations

import hmac
import re

from aiohttp import web

from qbo_gateway.faults import gateway_fault
from qbo_gateway.health.alert_rules import alert_json
from qbo_gateway.health.business_view import entry_json
from qbo_gateway.health.grading import STATUSES, realm_status
from qbo_gateway.health.wiring import Health
from qbo_gateway.ops.status_page import public_status, render_status_page

PREFIXES = ("/health", "/integrations/qbo/health")
_REALM = re.compile(r"^[0-9]{1,32}$")
_STATE_FILTERS = ("active", "acknowledged", "resolved")


def _problem(status: int, message: str) -> web.Response:
    name = "GW-NOT-FOUND" if status == 404 else "GW-BAD-PATH"
    return gateway_fault(name, status, message)


def _authorized(request: web.Request, admin_token: str | None) -> bool:
    if not admin_token:
        return False
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), admin_token.encode())


def _unauthorized() -> web.Response:
    return gateway_fault(
        "GW-UNAUTHENTICATED",
        401,
        "Admin token required",
        "Send 'Authorization: Bearer <QBO_ADMIN_TOKEN>'",
        headers={"WWW-Authenticate": 'Bearer realm="qbo-gateway-admin"'},
    )


def _int_query(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return max(0, int(raw))
    except ValueError:
        raise web.HTTPBadRequest(
            text=f'{{"error": "{name} must be an integer"}}', content_type="application/json"
        ) from None


def add_health_routes(app: web.Application, health: Health, *, admin_token: str | None) -> None:
    """Register every health route under both prefixes."""
    routes = HealthRoutes(health, admin_token)
    for prefix in PREFIXES:
        app.router.add_get(f"{prefix}/summary", routes.summary)
        app.router.add_get(f"{prefix}/dashboard", routes.dashboard)
        app.router.add_get(f"{prefix}/status-page", routes.status_page)
        app.router.add_get(f"{prefix}/alerts", routes.alerts)
        app.router.add_get(f"{prefix}/business/{{realm_id}}", routes.business)
        app.router.add_post(f"{prefix}/business/{{realm_id}}/check", routes.check)
        app.router.add_post(f"{prefix}/alerts/{{alert_id}}/ack", routes.ack)
        app.router.add_post(f"{prefix}/admin/start-monitoring", routes.start)
        app.router.add_post(f"{prefix}/admin/stop-monitoring", routes.stop)


class HealthRoutes:
    """The handlers, each using the health part it needs."""

    def __init__(self, health: Health, admin_token: str | None) -> None:
        self.health = health
        self.admin_token = admin_token

    async def summary(self, request: web.Request) -> web.Response:
        return web.json_response(await self.health.views.summary())

    async def dashboard(self, request: web.Request) -> web.Response:
        status = request.query.get("status")
        if status is not None and status not in STATUSES:
            return _problem(400, f"status must be one of {', '.join(STATUSES)}")
        body = await self.health.views.dashboard(
            status=status,
            limit=_int_query(request, "limit"),
            offset=_int_query(request, "offset") or 0,
        )
        return web.json_response(body)

    async def business(self, request: web.Request) -> web.Response:
        realm_id = request.match_info["realm_id"]
        if not _REALM.match(realm_id):
            return _problem(400, "realm id must be digits")
        body = await self.health.business_view.business(realm_id)
        if body is None:
            return _problem(404, "unknown realm")
        return web.json_response(body)

    async def status_page(self, request: web.Request) -> web.Response:
        page = render_status_page(await public_status(self.health))
        return web.Response(
            text=page,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    async def alerts(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        if state is not None and state not in (*_STATE_FILTERS, "all"):
            return _problem(400, "state must be active, acknowledged, resolved or all")
        items = await self.health.alerts.list_alerts()
        if state is not None and state != "all":
            items = [a for a in items if a.state == state]
        return web.json_response(
            [alert_json(a) for a in items], headers={"X-Total-Count": str(len(items))}
        )

    async def ack(self, request: web.Request) -> web.Response:
        if not _authorized(request, self.admin_token):
            return _unauthorized()
        acked = await self.health.alerts.ack(request.match_info["alert_id"], by="admin")
        if acked is None:
            return _problem(404, "unknown alert")
        return web.json_response(alert_json(acked))

    async def start(self, request: web.Request) -> web.Response:
        if not _authorized(request, self.admin_token):
            return _unauthorized()
        started = await self.health.cycle.start()
        return web.json_response({"monitoring": True, "changed": started})

    async def stop(self, request: web.Request) -> web.Response:
        if not _authorized(request, self.admin_token):
            return _unauthorized()
        stopped = await self.health.cycle.stop()
        return web.json_response({"monitoring": False, "changed": stopped})

    async def check(self, request: web.Request) -> web.Response:
        if not _authorized(request, self.admin_token):
            return _unauthorized()
        realm_id = request.match_info["realm_id"]
        if not _REALM.match(realm_id):
            return _problem(400, "realm id must be digits")
        health = self.health
        await health.token_rules.refresh_quietly()
        if realm_id not in health.table.realms:
            return _problem(404, "unknown realm")
        try:
            entry = await health.check_now(realm_id)
        except Exception as exc:  # noqa: BLE001 - report the failed check, do not 500
            return web.json_response(
                {"realm_id": realm_id, "check": None, "error": type(exc).__name__},
                status=200,
            )
        now = health.clock.now()
        return web.json_response(
            {
                "realm_id": realm_id,
                "status": realm_status(health.table, health.alerts, realm_id, now),
                "check": entry_json(entry) if entry is not None else None,
            }
        )
