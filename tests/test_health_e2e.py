"""Health through a whole gateway: live traffic raises alerts within the request, the API
shows the realm as operators and clients should see it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from qbo_gateway.clock import ManualClock
from qbo_gateway.simulator import FaultRule
from tests.harness import REALM, Stack, start_stack, stop_stack

ADMIN = {"Authorization": "Bearer admin-token-for-tests"}


@pytest.fixture
async def stack(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    s = await start_stack(
        aiohttp_server, tmp_path, clock=ManualClock(), breaker_failure_threshold=5
    )
    yield s
    await stop_stack(s)


async def business(stack: Stack, prefix: str = "") -> dict[str, Any]:
    async with stack.session.get(f"{stack.ops_url}{prefix}/health/business/{REALM}") as resp:
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
        return doc


async def test_failures_raise_alerts_and_open_the_circuit_in_the_health_api(stack: Stack) -> None:
    doc = await business(stack)
    assert doc["status"] == "healthy" and doc["breaker"]["state"] == "closed"
    stack.sim.inject(FaultRule(kind="server_error", path="customer"))
    for _ in range(5):
        async with stack.session.post(stack.api("customer"), json={"DisplayName": "x"}) as r:
            assert r.status == 500
        await stack.gateway.admitter.drain()
    await stack.gateway.health.flush()
    doc = await business(stack, "/integrations/qbo")
    assert doc["breaker"]["state"] == "open"
    assert doc["status"] == "unhealthy"
    kinds = {(a["kind"], a["severity"]) for a in doc["alerts"]}
    assert ("circuit_open", "critical") in kinds
    assert ("consecutive_failures", "critical") in kinds
    async with stack.session.get(stack.ops_url + "/health/alerts") as resp:
        alerts = await resp.json()
    circuit = next(a for a in alerts if a["kind"] == "circuit_open")
    assert circuit["realm_id"] == REALM and circuit["state"] == "active"
    async with stack.session.post(f"{stack.ops_url}/health/alerts/{circuit['id']}/ack") as resp:
        assert resp.status == 401
    url = f"{stack.ops_url}/health/alerts/{circuit['id']}/ack"
    async with stack.session.post(url, headers=ADMIN) as resp:
        assert resp.status == 200
    async with stack.session.get(stack.ops_url + "/health/summary") as resp:
        summary = await resp.json()
    # One realm, and its circuit is open: the gateway as a whole cannot serve it.
    assert summary["status"] == "unhealthy"
    async with stack.session.get(stack.ops_url + "/health/status-page") as resp:
        page = await resp.text()
        assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
    assert REALM not in page and stack.pair.access_token not in page
    async with stack.session.get(stack.ops_url + "/metrics") as resp:
        text = await resp.text()
    assert 'qbo_gateway_circuit_transitions_total{to="open"} 1.0' in text
    assert 'qbo_gateway_alerts_active{severity="critical"}' in text


async def test_reconnect_required_shows_in_health(stack: Stack) -> None:
    stack.sim.expire_access_token(REALM)
    stack.sim.inject(FaultRule(target="token", kind="invalid_grant"))
    async with stack.session.get(
        stack.api(f"companyinfo/{REALM}"), headers={"Cache-Control": "no-cache"}
    ) as resp:
        assert resp.status == 401
    await stack.gateway.health.flush()
    doc = await business(stack)
    assert doc["status"] == "needs_reconnect"
    assert doc["token"]["needs_reconnect"] is True
    assert any(a["kind"] == "reconnect_required" for a in doc["alerts"])


async def test_admin_check_probes_companyinfo_through_the_pipeline(stack: Stack) -> None:
    url = f"{stack.ops_url}/health/business/{REALM}/check"
    async with stack.session.post(url) as resp:
        assert resp.status == 401
    before = len(stack.sim.api_requests)
    async with stack.session.post(url, headers=ADMIN) as resp:
        assert resp.status == 200
    probes = stack.sim.api_requests[before:]
    assert [r.path for r in probes] == [f"/v3/company/{REALM}/companyinfo/{REALM}"]
    labels = {"method": "GET", "outcome": "upstream", "code": "200"}
    # A probe is not a caller's request: it is not counted as proxied traffic.
    assert stack.metric("qbo_gateway_requests_total", labels) == 0
