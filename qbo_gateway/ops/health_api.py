"""The health API: JSON for operators, an HTML status page for clients.

Every route is served under `/health/...` and `/integrations/qbo/health/...` (the prefix
services used before the gateway). Reads are open on the ops listener; actions (ack,
start/stop, check) need `Authorization: Bearer <QBO_ADMIN_TOKEN>`, compared in constant
time; with no admin token configured every action answers 401. The status page is plain
HTML that refreshes itself, built from `public_status` (no realm ids, no secrets), every
value escaped.
"""

from __future__ import annotations

import hmac
import html
import re
from importlib import resources
from string import Template
from typing import Any

from aiohttp import web

from qbo_gateway.faults import gateway_fault
from qbo_gateway.health.alert_rules import alert_json, iso
from qbo_gateway.health.business_view import entry_json
from qbo_gateway.health.grading import STATUSES, realm_status
from qbo_gateway.health.wiring import Health

PREFIXES = ("/health", "/integrations/qbo/health")
_REALM = re.compile(r"^[0-9]{1,32}$")
_STATE_FILTERS = ("active", "acknowledged", "resolved")
_STATUS_WORDS = {"operational": "Operational", "degraded": "Degraded", "outage": "Outage"}


def _template() -> Template:
    text = resources.files("qbo_gateway.ops").joinpath("templates", "status_page.html")
    return Template(text.read_text("utf-8"))


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


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


def render_status_page(model: dict[str, Any]) -> str:
    esc = html.escape
    components = "\n".join(
        f"    <li><span>{esc(c['name'])}</span>"
        f'<span class="state {esc(c["status"])}">{esc(_STATUS_WORDS[c["status"]])}</span></li>'
        for c in model["components"]
    )
    if model["incidents"]:
        incidents = "\n".join(
            '    <article class="incident">'
            f"<h3>{esc(i['title'])}</h3>"
            f"<p>{esc(i['detail'])}</p>"
            f'<p class="muted">Affecting {esc(i["affected"])} since '
            f'<time datetime="{esc(i["since"] or "")}">{esc(_readable(i["since"]))}</time>.</p>'
            "</article>"
            for i in model["incidents"]
        )
    else:
        incidents = '    <p class="muted">No incidents right now.</p>'
    return _template().substitute(
        headline=esc(model["headline"]),
        overall=esc(model["overall"]),
        components=components,
        incidents=incidents,
        updated_at=esc(model["updated_at"] or ""),
        updated_at_text=esc(_readable(model["updated_at"])),
    )


def _readable(stamp: str | None) -> str:
    if not stamp:
        return "unknown"
    return stamp.replace("T", " ").replace("Z", " UTC")


def public_status(health: Health) -> dict[str, Any]:
    """What clients may see: components and incidents in plain words, no realm ids."""
    now = health.clock.now()
    n = max(1, len(health.table.realms))
    affected: dict[str, set[str]] = {}
    since: dict[str, float] = {}
    for alert in health.alerts.active():
        if alert.kind == "refresh_token_expiring" and alert.severity != "critical":
            continue
        affected.setdefault(alert.kind, set()).add(alert.realm_id)
        since[alert.kind] = min(since.get(alert.kind, alert.started_at), alert.started_at)
    connectivity_down = len(
        affected.get("circuit_open", set())
        | {
            a.realm_id
            for a in health.alerts.active()
            if a.kind == "consecutive_failures" and a.severity == "critical"
        }
    )
    connectivity_any = set().union(
        *(
            affected.get(k, set())
            for k in ("consecutive_failures", "circuit_open", "slow_responses", "throttled")
        )
    )
    token_any = set().union(
        *(
            affected.get(k, set())
            for k in ("refresh_failing", "reconnect_required", "refresh_token_expiring")
        )
    )
    components = [
        {
            "name": "QuickBooks connectivity",
            "status": _component_status(connectivity_down, len(connectivity_any), n),
        },
        {"name": "Token service", "status": _component_status(0, len(token_any), n)},
        {
            "name": "Gateway",
            "status": "operational" if health.backend_up() else "degraded",
        },
    ]
    worst = max(components, key=lambda c: _COMPONENT_RANK[c["status"]])["status"]
    incidents = []
    for kind in _INCIDENT_ORDER:
        realms = affected.get(kind)
        if not realms:
            continue
        count = len(realms)
        incidents.append(
            {
                "title": _INCIDENT_WORDS[kind][0],
                "detail": _INCIDENT_WORDS[kind][1],
                "affected": f"{count} connected {'company' if count == 1 else 'companies'}",
                "since": iso(since[kind]),
            }
        )
    return {
        "overall": worst,
        "headline": _HEADLINES[worst],
        "components": components,
        "incidents": incidents,
        "updated_at": iso(now),
    }


_COMPONENT_RANK = {"operational": 0, "degraded": 1, "outage": 2}
_HEADLINES = {
    "operational": "All systems operational",
    "degraded": "Some services are degraded",
    "outage": "Major service disruption",
}
_INCIDENT_ORDER = (
    "circuit_open",
    "consecutive_failures",
    "reconnect_required",
    "slow_responses",
    "throttled",
    "refresh_failing",
    "refresh_token_expiring",
)
_INCIDENT_WORDS = {
    "circuit_open": (
        "QuickBooks Online is unreachable for some companies",
        "Requests are paused briefly and retried automatically; recent data may be shown "
        "from a saved copy.",
    ),
    "consecutive_failures": (
        "Requests to QuickBooks Online are failing for some companies",
        "We are retrying automatically; recent data may be shown from a saved copy.",
    ),
    "reconnect_required": (
        "Some companies need to reconnect QuickBooks",
        "An account owner must sign in to QuickBooks again to restore the connection.",
    ),
    "slow_responses": (
        "QuickBooks Online is responding slowly",
        "Requests are completing, but more slowly than usual.",
    ),
    "throttled": (
        "QuickBooks Online is limiting request rates",
        "Requests are delayed briefly and complete once the limit lifts.",
    ),
    "refresh_failing": (
        "Renewing QuickBooks access is being retried",
        "Service continues normally while renewal is retried.",
    ),
    "refresh_token_expiring": (
        "QuickBooks authorization expires soon for some companies",
        "An account owner should reconnect QuickBooks to avoid an interruption.",
    ),
}


def _component_status(down: int, affected: int, total: int) -> str:
    if down and down * 2 >= total:
        return "outage"
    if affected:
        return "degraded"
    return "operational"


def add_health_routes(app: web.Application, health: Health, *, admin_token: str | None) -> None:
    """Register every health route under both prefixes."""

    async def summary(request: web.Request) -> web.Response:
        return web.json_response(await health.views.summary())

    async def dashboard(request: web.Request) -> web.Response:
        status = request.query.get("status")
        if status is not None and status not in STATUSES:
            return _problem(400, f"status must be one of {', '.join(STATUSES)}")
        body = await health.views.dashboard(
            status=status,
            limit=_int_query(request, "limit"),
            offset=_int_query(request, "offset") or 0,
        )
        return web.json_response(body)

    async def business(request: web.Request) -> web.Response:
        realm_id = request.match_info["realm_id"]
        if not _REALM.match(realm_id):
            return _problem(400, "realm id must be digits")
        body = await health.business_view.business(realm_id)
        if body is None:
            return _problem(404, "unknown realm")
        return web.json_response(body)

    async def status_page(request: web.Request) -> web.Response:
        page = render_status_page(public_status(health))
        return web.Response(
            text=page,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    async def alerts(request: web.Request) -> web.Response:
        state = request.query.get("state")
        if state is not None and state not in (*_STATE_FILTERS, "all"):
            return _problem(400, "state must be active, acknowledged, resolved or all")
        items = await health.alerts.list_alerts()
        if state is not None and state != "all":
            items = [a for a in items if a.state == state]
        return web.json_response(
            [alert_json(a) for a in items], headers={"X-Total-Count": str(len(items))}
        )

    async def ack(request: web.Request) -> web.Response:
        if not _authorized(request, admin_token):
            return _unauthorized()
        acked = await health.alerts.ack(request.match_info["alert_id"], by="admin")
        if acked is None:
            return _problem(404, "unknown alert")
        return web.json_response(alert_json(acked))

    async def start(request: web.Request) -> web.Response:
        if not _authorized(request, admin_token):
            return _unauthorized()
        started = await health.cycle.start()
        return web.json_response({"monitoring": True, "changed": started})

    async def stop(request: web.Request) -> web.Response:
        if not _authorized(request, admin_token):
            return _unauthorized()
        stopped = await health.cycle.stop()
        return web.json_response({"monitoring": False, "changed": stopped})

    async def check(request: web.Request) -> web.Response:
        if not _authorized(request, admin_token):
            return _unauthorized()
        realm_id = request.match_info["realm_id"]
        if not _REALM.match(realm_id):
            return _problem(400, "realm id must be digits")
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

    for prefix in PREFIXES:
        app.router.add_get(f"{prefix}/summary", summary)
        app.router.add_get(f"{prefix}/dashboard", dashboard)
        app.router.add_get(f"{prefix}/status-page", status_page)
        app.router.add_get(f"{prefix}/alerts", alerts)
        app.router.add_get(f"{prefix}/business/{{realm_id}}", business)
        app.router.add_post(f"{prefix}/business/{{realm_id}}/check", check)
        app.router.add_post(f"{prefix}/alerts/{{alert_id}}/ack", ack)
        app.router.add_post(f"{prefix}/admin/start-monitoring", start)
        app.router.add_post(f"{prefix}/admin/stop-monitoring", stop)
