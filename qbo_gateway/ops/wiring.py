"""The ops listener's builder: probes, metrics, admin actions, realm lifecycle, OAuth connect,
health API."""

from __future__ import annotations

from aiohttp import web

from qbo_gateway.admission.gate import Admitter
from qbo_gateway.clock import Clock
from qbo_gateway.edge.answers import ops_edge
from qbo_gateway.health.wiring import Health
from qbo_gateway.metrics import Metrics
from qbo_gateway.oauth.connect import ConnectFlow, connect_routes
from qbo_gateway.oauth.return_to import ReturnUrls
from qbo_gateway.ops.health_api import add_health_routes
from qbo_gateway.ops.listener import Readiness, admin_authorized, build_ops_app
from qbo_gateway.ops.loop_metrics import register_loop_tasks
from qbo_gateway.ops.openapi import add_openapi_routes
from qbo_gateway.ops.read_guard import read_guard
from qbo_gateway.ops.realms_api import RealmsApi
from qbo_gateway.settings import Settings, secret_text
from qbo_gateway.tokens.manager import TokenManager


def ops_app(
    settings: Settings,
    *,
    readiness: Readiness,
    metrics: Metrics,
    tokens: TokenManager,
    admitter: Admitter,
    flow: ConnectFlow,
    health: Health,
    clock: Clock,
) -> web.Application:
    admin_token = secret_text(settings.admin_token) or None

    async def force_refresh(realm_id: str) -> dict[str, object]:
        status = await tokens.force_refresh(realm_id)
        return {
            "realm_id": status.realm_id,
            "refreshed": True,
            "access_expires_at": status.access_expires_at,
            "refresh_expires_at": status.refresh_expires_at,
            "needs_reconnect": status.needs_reconnect,
        }

    async def admin_guard(request: web.Request) -> bool:
        # Starting a connection hands out an Intuit consent link: admins only.
        return admin_authorized(request, admin_token)

    app = build_ops_app(
        readiness=readiness,
        registry=metrics.registry,
        admin_token=admin_token,
        force_refresh=force_refresh,
    )
    app.add_routes(connect_routes(flow, guard=admin_guard))
    realms = RealmsApi(
        tokens=tokens,
        admitter=admitter,
        flow=flow,
        return_urls=ReturnUrls(settings.connect_return_url_list),
        clock=clock,
        admin_token=admin_token,
    )
    app.add_routes(realms.routes())
    add_health_routes(app, health, admin_token=admin_token)
    add_openapi_routes(app)
    register_loop_tasks(metrics.registry)
    app.middlewares.append(ops_edge())
    app.middlewares.append(read_guard(secret_text(settings.ops_read_token) or None, admin_token))
    return app
