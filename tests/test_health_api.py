"""The health API over real HTTP: both prefixes, JSON shapes, admin token, status page HTML."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from qbo_gateway.admission.records import BreakerState, RealmLoad
from qbo_gateway.clock import ManualClock
from qbo_gateway.health.wiring import Health
from qbo_gateway.metrics import Metrics
from qbo_gateway.ops.health_api import add_health_routes, render_status_page
from tests.test_health import FakeGateway, fail, make_monitor, ok

ADMIN = "s3cret-admin-token"
PREFIXES = ("/health", "/integrations/qbo/health")
REALMS = ("9130349226472226", "9130349226472227", "4620816365271398")


class ParkedClock(ManualClock):
    """Time moves only when the test says; the monitor loop's sleep parks until cancelled,
    so starting the loop runs exactly one cycle."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.Event().wait()


@pytest.fixture
async def setup(aiohttp_client: Any) -> Any:
    gw = FakeGateway(ParkedClock())
    for realm in REALMS:
        gw.add_realm(realm)
    monitor = make_monitor(gw, metrics=Metrics(CollectorRegistry()), autostart=False)
    app = web.Application()
    add_health_routes(app, monitor, admin_token=ADMIN)

    async def lifecycle(_: web.Application) -> Any:
        await monitor.open(background=False)
        yield
        await monitor.close()

    app.cleanup_ctx.append(lifecycle)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return gw, monitor, client


def auth(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_summary_dashboard_business_alerts_shapes(setup: Any, prefix: str) -> None:
    gw, monitor, client = setup
    a, b, c = REALMS
    await monitor.token_rules.refresh(force=True)
    ok(monitor, a, 0.4)
    for _ in range(2):
        fail(monitor, b)
    # The admission backend holds the open circuit; the observer hears of the transition.
    open_until = gw.clock.now() + 300
    gw.loads[c] = RealmLoad(BreakerState.OPEN, 5, open_until, None, 3, 1, 0, 1)
    monitor.observer.breaker_changed(c, BreakerState.OPEN)
    await monitor.flush()
    gw.clock.advance(60)  # c has been down for the whole minute it was seen

    resp = await client.get(f"{prefix}/summary")
    assert resp.status == 200
    summary = await resp.json()
    assert summary["status"] == "degraded"
    assert summary["realms"] == {
        "total": 3,
        "healthy": 1,
        "degraded": 1,
        "unhealthy": 1,
        "needs_reconnect": 0,
        "refresh_outcome_unknown": 0,
    }
    assert summary["monitor"]["running"] is False
    assert summary["alerts"]["active"] == 2
    assert {x["kind"] for x in summary["alerts"]["items"]} == {
        "consecutive_failures",
        "circuit_open",
    }

    resp = await client.get(f"{prefix}/dashboard")
    board = await resp.json()
    assert board["totals"]["realms"] == 3
    assert {r["realm_id"]: r["status"] for r in board["realms"]} == {
        a: "healthy",
        b: "degraded",
        c: "unhealthy",
    }
    assert board["alerts"]["by_kind"] == {"consecutive_failures": 1, "circuit_open": 1}
    assert set(board["sla"]["targets"]) == {
        "uptime_ratio",
        "avg_response_seconds",
        "time_to_recover_seconds",
        "time_to_detect_seconds",
    }
    filtered = await (await client.get(f"{prefix}/dashboard?status=unhealthy")).json()
    assert [r["realm_id"] for r in filtered["realms"]] == [c]
    paged = await (await client.get(f"{prefix}/dashboard?limit=1&offset=1")).json()
    assert len(paged["realms"]) == 1 and paged["realms_total"] == 3
    assert (await client.get(f"{prefix}/dashboard?status=bogus")).status == 400

    resp = await client.get(f"{prefix}/business/{c}")
    detail = await resp.json()
    assert detail["status"] == "unhealthy"
    assert detail["breaker"]["state"] == "open"
    assert detail["breaker"]["consecutive_failed_attempts"] == 5
    assert detail["breaker"]["counts"] == "attempts"
    assert detail["token"]["needs_reconnect"] is False
    assert detail["token"]["access_expires_at"].endswith("Z")
    assert detail["rate_limit"]["requests_last_minute"] == 3
    assert detail["sla"]["uptime_ratio"] == 0.0
    assert detail["sla"]["downtime_seconds"] == 60.0
    assert detail["sla"]["targets"]["uptime_ratio"]["met"] is False
    assert detail["sla"]["incidents"] == 1
    timeline = detail["timeline"]  # one point per clock hour of the day, the newest last
    assert len(timeline) == 25 and timeline[-1]["uptime_ratio"] == 0.0
    assert timeline[-1]["start"].endswith(":00:00Z") and timeline[1]["start"].endswith(":00:00Z")
    assert {p["uptime_ratio"] for p in timeline[:-1]} == {None}  # nothing seen before
    assert [x["kind"] for x in detail["alerts"]] == ["circuit_open"]
    assert "recent_checks" in detail and "latency" in detail
    detail_a = await (await client.get(f"{prefix}/business/{a}")).json()
    assert detail_a["latency"]["avg_seconds"] == 0.4
    assert (await client.get(f"{prefix}/business/5555")).status == 404
    assert (await client.get(f"{prefix}/business/12ab")).status == 400

    resp = await client.get(f"{prefix}/alerts")
    alerts = await resp.json()
    assert isinstance(alerts, list) and len(alerts) == 2
    for alert in alerts:
        assert {"id", "realm_id", "kind", "severity", "state", "raised_at", "resolved_at"} <= set(
            alert
        )
    active = await (await client.get(f"{prefix}/alerts?state=active")).json()
    assert len(active) == 2


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_admin_routes_need_the_admin_token(setup: Any, prefix: str) -> None:
    gw, monitor, client = setup
    monitor.observer.throttled(REALMS[0], until=gw.clock.now() + 60)
    await monitor.flush()
    (alert,) = await (await client.get(f"{prefix}/alerts")).json()
    actions = [
        f"{prefix}/alerts/{alert['id']}/ack",
        f"{prefix}/admin/start-monitoring",
        f"{prefix}/admin/stop-monitoring",
        f"{prefix}/business/{REALMS[0]}/check",
    ]
    for path in actions:
        for headers in ({}, auth("wrong"), {"Authorization": ADMIN}, auth(ADMIN + "x")):
            resp = await client.post(path, headers=headers)
            assert resp.status == 401, (path, headers)
    assert gw.probed == [] and not monitor.cycle.monitoring

    resp = await client.post(f"{prefix}/alerts/{alert['id']}/ack", headers=auth())
    assert resp.status == 200
    assert (await resp.json())["state"] == "acknowledged"
    assert (await client.post(f"{prefix}/alerts/nope/ack", headers=auth())).status == 404

    resp = await client.post(f"{prefix}/admin/start-monitoring", headers=auth())
    assert resp.status == 200 and (await resp.json())["monitoring"] is True
    for _ in range(50):  # the loop's first cycle runs in the background
        if monitor.cycle.last_cycle is not None:
            break
        await asyncio.sleep(0.01)
    # The throttled realm is in QBO's cool-down: no probe is spent on it until that ends.
    assert sorted(gw.probed) == sorted(REALMS[1:])
    summary = await (await client.get(f"{prefix}/summary")).json()
    assert summary["monitor"]["running"] is True
    assert summary["monitor"]["last_cycle"]["probed"] == len(REALMS) - 1
    resp = await client.post(f"{prefix}/admin/stop-monitoring", headers=auth())
    assert resp.status == 200 and not monitor.cycle.monitoring

    gw.probed.clear()
    resp = await client.post(f"{prefix}/business/{REALMS[1]}/check", headers=auth())
    body = await resp.json()
    assert resp.status == 200 and gw.probed == [REALMS[1]]
    assert body["check"]["source"] == "check" and body["check"]["ok"] is True
    resp = await client.post(f"{prefix}/business/777/check", headers=auth())
    assert resp.status == 404


async def test_admin_disabled_without_token(aiohttp_client: Any) -> None:
    gw = FakeGateway(ManualClock())
    monitor: Health = make_monitor(gw, autostart=False)
    app = web.Application()
    add_health_routes(app, monitor, admin_token=None)
    client = await aiohttp_client(app)
    resp = await client.post("/health/admin/start-monitoring", headers=auth(""))
    assert resp.status == 401
    resp = await client.post("/health/admin/start-monitoring", headers={"Authorization": "Bearer"})
    assert resp.status == 401


async def test_status_page_is_client_safe_html(setup: Any) -> None:
    _gw, monitor, client = setup
    await monitor.token_rules.refresh(force=True)
    monitor.observer.breaker_changed(REALMS[0], BreakerState.OPEN)
    monitor.observer.token_event(REALMS[1], "reconnect_required")
    for _ in range(6):
        ok(monitor, REALMS[2], 12.0)
    for prefix in PREFIXES:
        resp = await client.get(f"{prefix}/status-page")
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
        for realm in REALMS:
            assert realm not in page
        assert ADMIN not in page and "<script" not in page.lower()
        assert 'http-equiv="refresh"' in page and '<html lang="en">' in page
        assert "QuickBooks connectivity" in page and "Token service" in page
        assert "Gateway" in page
        assert "QuickBooks Online is unreachable for some companies" in page
        assert "Some companies need to reconnect QuickBooks" in page
        assert "QuickBooks Online is responding slowly" in page
        assert "Affecting 1 connected company" in page


def test_status_page_escapes_everything() -> None:
    model = {
        "overall": "degraded",
        "headline": "<b>x</b>",
        "components": [{"name": "<script>alert(1)</script>", "status": "degraded"}],
        "incidents": [
            {"title": "a&b", "detail": '"quoted"', "affected": "1 company", "since": None}
        ],
        "updated_at": "2027-01-01T00:00:00Z",
    }
    page = render_status_page(model)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "a&amp;b" in page and "&lt;b&gt;x&lt;/b&gt;" in page


async def test_autostart_runs_the_monitor_until_closed() -> None:
    gw = FakeGateway(ParkedClock())
    gw.add_realm(REALMS[0])
    monitor = make_monitor(gw, autostart=True)
    await monitor.open()
    try:
        assert monitor.cycle.monitoring
        for _ in range(50):
            if monitor.cycle.last_cycle is not None:
                break
            await asyncio.sleep(0.01)
        assert gw.probed == [REALMS[0]]
    finally:
        await monitor.close()
    assert not monitor.cycle.monitoring
    manual = make_monitor(FakeGateway(ParkedClock()), autostart=False)
    await manual.open()
    try:
        assert not manual.cycle.monitoring
    finally:
        await manual.close()


class BrokenTokens(FakeGateway):
    """A token store that cannot be read right now (Redis down, say)."""

    async def token_statuses(self) -> list[Any]:
        raise ConnectionError("token store unreachable")

    async def token_status(self, realm_id: str) -> Any:
        raise ConnectionError("token store unreachable")


async def test_health_api_serves_cached_views_when_token_state_is_unreadable(
    aiohttp_client: Any,
) -> None:
    gw = BrokenTokens(ManualClock())
    monitor = make_monitor(gw, autostart=False)
    monitor.observer.token_event(REALMS[0], "imported")
    ok(monitor, REALMS[0])
    app = web.Application()
    add_health_routes(app, monitor, admin_token=ADMIN)
    client = await aiohttp_client(app)
    summary = await (await client.get("/health/summary")).json()
    assert summary["realms"]["total"] == 1 and summary["status"] == "healthy"
    assert (await client.get("/health/dashboard")).status == 200
    detail = await client.get(f"/health/business/{REALMS[0]}")
    assert detail.status == 200 and (await detail.json())["status"] == "healthy"
    assert (await client.get("/health/status-page")).status == 200
