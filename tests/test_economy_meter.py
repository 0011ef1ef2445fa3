"""The meter through whole gateways: every call QBO answers counted, month figures, alerts.

Gateways (embedded, and Redis mode on a private redis-server) in front of the simulator on
real sockets, driven by a ManualClock that both share: the month's end is a clock advance.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from cryptography.fernet import Fernet
from prometheus_client import CollectorRegistry

from qbo_gateway.app import build_gateway
from qbo_gateway.economy.report import month_report
from qbo_gateway.health.alert_rules import APP_WIDE
from tests.cache_rig import Rig, start_rig
from tests.harness import REALM
from tests.redis_server import RedisServer

KEYS = Fernet.generate_key().decode()
# The ManualClock starts at 2027-01-15T08:00Z: this much of January is left.
MONTH_LEFT = 16 * 86400 + 16 * 3600
MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture(params=["memory", "redis"])
async def make(
    request: pytest.FixtureRequest,
    aiohttp_server: Any,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_prefix: str,
) -> AsyncIterator[MakeRig]:
    made: list[Rig] = []

    async def build(**overrides: Any) -> Rig:
        if request.param == "redis":
            overrides.update(redis_url=redis_server.url, token_keys=KEYS)
        # Counting only: the guard (tested on its own) would answer reads past the cap.
        overrides.setdefault("coreplus_guard", "off")
        overrides.setdefault("cache_write_through_seconds", 0)
        rig = await start_rig(aiohttp_server, tmp_path, redis_prefix, **overrides)
        made.append(rig)
        return rig

    yield build
    for rig in made:
        await rig.close()


async def report(rig: Rig) -> dict[str, Any]:
    return await month_report(rig.gateway.meter, guard="off")


async def reads(rig: Rig, n: int, rest: str = f"companyinfo/{REALM}") -> None:
    for _ in range(n):
        status, _, _ = await rig.get(rest)
        assert status == 200


def app_alert(rig: Rig, kind: str) -> Any:
    return rig.gateway.health.alerts.active_for(APP_WIDE).get(kind)


async def test_reads_are_metered_writes_are_core(make: MakeRig) -> None:
    rig = await make()
    await reads(rig, 2)
    await reads(rig, 1, "query?query=select%20*%20from%20Customer")
    status, _, body = await rig.post("customer", json.dumps({"DisplayName": "A"}).encode())
    assert status == 200
    created = json.loads(body)["Customer"]["Id"]
    await reads(rig, 1, f"customer/{created}")
    month = await report(rig)
    assert month["used"] == 4
    assert month["core_calls"] == 1
    assert month["top_realms"] == [{"realm_id": REALM, "calls": 4}]
    assert month["top_callers"] == [{"caller": "open-mode", "calls": 4}]
    entities = {e["entity"]: e["calls"] for e in month["top_entities"]}
    assert entities == {"companyinfo": 2, "query": 1, "customer": 1}
    assert month["month"] == "2027-01"
    assert month["resets_at"] == "2027-02-01T00:00:00Z"
    assert rig.metric("qbo_gateway_coreplus_calls_total", {"source": "caller"}) == 4
    assert rig.metric("qbo_gateway_core_calls_total") == 1
    assert rig.metric("qbo_gateway_coreplus_month_calls", {"figure": "used"}) == 4


async def test_probes_are_metered_as_the_gateways_own(make: MakeRig) -> None:
    rig = await make()
    await rig.gateway.proxy.probe(REALM)
    month = await report(rig)
    assert (month["used"], month["probe_calls"], month["top_callers"]) == (1, 1, [])
    assert rig.metric("qbo_gateway_coreplus_calls_total", {"source": "probe"}) == 1
    assert rig.metric("qbo_gateway_coreplus_calls_total", {"source": "caller"}) == 0


async def test_a_retried_read_counts_every_answered_attempt(make: MakeRig) -> None:
    from qbo_gateway.simulator import FaultRule

    rig = await make()
    rig.sim.inject(FaultRule("server_error", path="companyinfo", times=1))
    await reads(rig, 1)
    assert (await report(rig))["used"] == 2


async def test_alerts_at_50_80_95_percent_and_on_the_projection(make: MakeRig) -> None:
    rig = await make(coreplus_monthly_limit=20)
    await reads(rig, 9)
    await report(rig)
    assert app_alert(rig, "coreplus_usage") is None
    await reads(rig, 1)
    await report(rig)
    usage = app_alert(rig, "coreplus_usage")
    assert (usage.severity, usage.message[:3]) == ("warning", "50%")
    # 10 calls in the 14 days 8 hours of January so far: 21.6 by the month's end.
    projection = app_alert(rig, "coreplus_projection")
    assert projection.severity == "warning"
    assert projection.value == round(10 + 10 * MONTH_LEFT / (14 * 86400 + 8 * 3600))
    await reads(rig, 6)
    await report(rig)
    assert app_alert(rig, "coreplus_usage").message[:3] == "80%"
    await reads(rig, 3)
    await report(rig)
    usage = app_alert(rig, "coreplus_usage")
    assert (usage.severity, usage.message[:3]) == ("critical", "95%")
    assert rig.gateway.meter.guard_active


async def test_the_months_end_starts_a_new_count_and_clears_the_alerts(make: MakeRig) -> None:
    rig = await make(coreplus_monthly_limit=20)
    await reads(rig, 12)
    await report(rig)
    assert app_alert(rig, "coreplus_usage") is not None
    rig.clock.advance(MONTH_LEFT)
    month = await report(rig)
    assert (month["month"], month["used"], month["projected"]) == ("2027-02", 0, 0)
    assert app_alert(rig, "coreplus_usage") is None
    assert app_alert(rig, "coreplus_projection") is None
    assert not rig.gateway.meter.guard_active
    await reads(rig, 1)
    assert (await report(rig))["used"] == 1


async def test_the_projection_follows_the_recent_rate(make: MakeRig) -> None:
    rig = await make(coreplus_monthly_limit=20_000)
    await reads(rig, 10)
    await report(rig)
    assert app_alert(rig, "coreplus_projection") is None
    rig.clock.advance(600)
    await reads(rig, 10)
    month = await report(rig)
    # 10 calls in the last 10 minutes: 60 an hour for the rest of the month.
    assert month["rate_per_hour"] == 60.0
    assert month["projected"] == round(20 + (MONTH_LEFT - 600) / 60)
    assert app_alert(rig, "coreplus_projection") is not None
    assert rig.gateway.meter.guard_active


async def test_the_summary_and_dashboard_show_the_month(make: MakeRig, aiohttp_server: Any) -> None:
    rig = await make(coreplus_monthly_limit=1000)
    await reads(rig, 3)
    ops = await aiohttp_server(rig.gateway.ops_app)
    async with ClientSession() as session:
        for route in ("/health/summary", "/health/dashboard"):
            async with session.get(ops.make_url(route)) as resp:
                body = await resp.json()
            section = body["coreplus"]
            assert (section["used"], section["limit"]) == (3, 1000)
            assert section["top_realms"] == [{"realm_id": REALM, "calls": 3}]
            assert section["guard"] == {"policy": "off", "active": False}


async def test_replicas_count_into_one_fleet_total(
    aiohttp_server: Any, tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> None:
    rig = await start_rig(
        aiohttp_server, tmp_path, redis_prefix, redis_url=redis_server.url, token_keys=KEYS
    )
    other = await build_gateway(
        rig.gateway.settings,
        clock=rig.clock,
        registry=CollectorRegistry(),
        redis_prefix=redis_prefix,
    )
    try:
        server = await aiohttp_server(other.proxy_app)
        await reads(rig, 2)
        for _ in range(3):
            url = server.make_url(f"/v3/company/{REALM}/companyinfo/{REALM}")
            async with rig.session.get(url) as resp:
                assert resp.status == 200
        await other.meter.drained()
        month = await report(rig)
        assert month["used"] == 5
        assert month["top_realms"] == [{"realm_id": REALM, "calls": 5}]
    finally:
        await other.close()
        await rig.close()
