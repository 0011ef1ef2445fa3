"""The client status page rendered by a real browser (headless Chromium, no JavaScript).

The page is served over a real socket and loaded by Debian's chromium; the test keeps a
screenshot as an artifact (TEST_ARTIFACTS_DIR, default `test-artifacts/` at the project
root) and checks the DOM the browser built: the headline, components and incidents are
there, and no realm id is. Skipped, with the reason, when /usr/bin/chromium is absent
(.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from qbo_gateway.admission.records import BreakerState
from qbo_gateway.clock import ManualClock
from qbo_gateway.health.wiring import Health
from qbo_gateway.metrics import Metrics
from qbo_gateway.ops.health_api import add_health_routes
from tests.test_health import FakeGateway, fail, make_monitor, ok

CHROMIUM = Path("/usr/bin/chromium")
REALMS = ("9130349226472226", "4620816365271398", "1234567890123", "5550001112223")
ARTIFACTS = Path(
    os.environ.get("TEST_ARTIFACTS_DIR", Path(__file__).resolve().parent.parent / "test-artifacts")
)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is not installed (apt-get install -y chromium; .ci/run does it)",
)


async def _chromium(*args: str, profile: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1200,900",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


async def _a_day_of_history(monitor: Health, gw: FakeGateway) -> None:
    """24 hours: steady traffic and renewals, a 40-minute outage of one realm at hour 6,
    failing renewals at hour 15, gateway errors at hour 20."""
    for hour in range(24):
        for minute in range(0, 60, 10):
            for realm in REALMS:
                if hour == 6 and minute < 40 and realm == REALMS[1]:
                    fail(monitor, realm)
                else:
                    ok(monitor, realm, 0.3)
            if hour == 20:
                monitor.observer.request_finished(
                    REALMS[2], outcome="error", status=503, latency=0.0, fault=None
                )
            gw.clock.advance(600)
        monitor.observer.token_event(REALMS[3], "refresh_failed" if hour == 15 else "refreshed")
        await monitor.flush()


async def test_status_page_renders_in_chromium_without_realm_ids(aiohttp_server: Any) -> None:
    gw = FakeGateway(ManualClock())
    for realm in REALMS:
        gw.add_realm(realm)
    monitor = make_monitor(gw, metrics=Metrics(CollectorRegistry()), autostart=False)
    await monitor.token_rules.refresh(force=True)
    await _a_day_of_history(monitor, gw)
    monitor.observer.breaker_changed(REALMS[0], BreakerState.OPEN)
    for _ in range(3):
        fail(monitor, REALMS[1])
    for _ in range(5):
        ok(monitor, REALMS[2], 7.5)
    monitor.observer.token_event(REALMS[3], "reconnect_required")
    app = web.Application()
    add_health_routes(app, monitor, admin_token="admin-secret")
    server = await aiohttp_server(app)
    url = str(server.make_url("/integrations/qbo/health/status-page"))

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "status_page.png"
    shot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="qbogw-chromium-") as profile:
        await _chromium(f"--screenshot={shot}", url, profile=profile)
        dom = (await _chromium("--dump-dom", url, profile=profile)).decode()

    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 5000  # a rendered page, not a blank canvas
    assert "Service status" in dom
    assert "Some services are degraded" in dom
    assert "QuickBooks connectivity" in dom and "Token service" in dom
    assert "QuickBooks Online is unreachable for some companies" in dom
    assert "Requests to QuickBooks Online are failing for some companies" in dom
    assert "Some companies need to reconnect QuickBooks" in dom
    for realm in REALMS:
        assert realm not in dom
    assert "admin-secret" not in dom
    # 24 hourly bars per component: connectivity dips at the outage, tokens at the failures.
    assert dom.count('class="bar ') == 3 * 24
    assert dom.count('class="bar major"') == 3  # the outage, the renewals, the errors
    assert "uptime over the last 24 hours" in dom
    assert "<script" not in dom
