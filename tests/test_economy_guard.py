"""The guard near the cap through whole gateways (embedded and Redis mode).

The month's limit is set low, so a few reads push the projection past it; the meter's
batch is awaited (`meter.drained`) so the guard's state is known before the next read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests.cache_rig import Rig, start_rig
from tests.harness import REALM
from tests.redis_server import RedisServer

KEYS = Fernet.generate_key().decode()
READ = f"companyinfo/{REALM}"
MONTH_LEFT = 16 * 86400 + 16 * 3600  # from the ManualClock's start to February
BILLING = {"Authorization": "Bearer billing-key"}
NIGHTLY = {"Authorization": "Bearer nightly-key"}
MakeRig = Callable[..., Awaitable[Rig]]


def callers_file(tmp_path: Path) -> Path:
    def entry(name: str, key: str, background: bool) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return (
            f"  - name: {name}\n    key_sha256: {digest}\n"
            f'    realms: ["*"]\n    background: {str(background).lower()}\n'
        )

    path = tmp_path / "callers.yaml"
    path.write_text(
        "callers:\n"
        + entry("billing", "billing-key", False)
        + entry("nightly", "nightly-key", True)
    )
    return path


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
        overrides.setdefault("callers_file", callers_file(tmp_path))
        rig = await start_rig(aiohttp_server, tmp_path, redis_prefix, **overrides)
        made.append(rig)
        return rig

    yield build
    for rig in made:
        await rig.close()


async def spend(rig: Rig, n: int, headers: dict[str, str] = BILLING) -> None:
    """`n` reads QBO answers, then the guard's state as the meter's batch leaves it."""
    for _ in range(n):
        status, _, _ = await rig.get(READ, headers=headers)
        assert status == 200
    await rig.gateway.meter.drained()


def qbo_reads(rig: Rig) -> int:
    return sum(1 for r in rig.sim.api_requests if "companyinfo" in r.path)


async def test_stale_policy_serves_stored_reads_past_freshness(make: MakeRig) -> None:
    rig = await make(coreplus_guard="stale", coreplus_monthly_limit=5)
    await spend(rig, 1)
    assert not rig.gateway.meter.guard_active  # 1 call by mid-month: 2.2 by its end
    await spend(rig, 2)
    assert rig.gateway.meter.guard_active  # 3 calls: 6.5 by the month's end
    rig.clock.advance(120)
    before = qbo_reads(rig)
    status, headers, body = await rig.get(READ, headers=BILLING)
    assert status == 200
    assert json.loads(body)["CompanyInfo"]["Id"]
    assert headers["Cache-Status"] == "qbo-gateway; hit; ttl=-120; detail=read-budget"
    assert headers["Age"] == "120"
    assert "X-QBO-Gateway-Degraded" not in headers
    assert qbo_reads(rig) == before
    assert rig.metric("qbo_gateway_stale_served_total", {"reason": "read-budget"}) == 1
    # A caller asking for QBO's own answer still gets it.
    status, headers, _ = await rig.get(READ, headers={**BILLING, "Cache-Control": "no-cache"})
    assert (status, qbo_reads(rig)) == (200, before + 1)
    assert "read-budget" not in headers["Cache-Status"]


async def test_stale_policy_without_a_stored_read_asks_qbo(make: MakeRig) -> None:
    rig = await make(coreplus_guard="stale", coreplus_monthly_limit=3)
    await spend(rig, 3)
    status, headers, _ = await rig.get("query?query=select%20*%20from%20Customer", headers=BILLING)
    assert status == 200
    assert "read-budget" not in headers["Cache-Status"]


async def test_background_policy_refuses_background_reads_only(make: MakeRig) -> None:
    rig = await make(coreplus_guard="background", coreplus_monthly_limit=3)
    await spend(rig, 3)
    before = qbo_reads(rig)
    status, headers, body = await rig.get(READ, headers=NIGHTLY)
    assert status == 429
    assert headers["X-QBO-Gateway-Error"] == "GW-READ-BUDGET"
    assert headers["X-Request-Id"]
    assert headers["Retry-After"] == "3600"
    fault = json.loads(body)["Fault"]
    assert (fault["type"], fault["Error"][0]["code"]) == ("GatewayFault", "3001")
    assert qbo_reads(rig) == before
    assert rig.metric("qbo_gateway_rate_limited_total", {"reason": "read_budget"}) == 1
    # The same read from a caller not marked background goes to QBO (no stale policy).
    status, headers, _ = await rig.get(READ, headers=BILLING)
    assert (status, qbo_reads(rig)) == (200, before + 1)
    # Writes are never touched.
    url = f"{rig.url}/v3/company/{REALM}/customer"
    async with rig.session.post(url, json={"DisplayName": "Night"}, headers=NIGHTLY) as resp:
        assert resp.status == 200


async def test_both_serves_stale_first_and_refuses_what_is_not_stored(make: MakeRig) -> None:
    rig = await make(coreplus_guard="both", coreplus_monthly_limit=3)
    await spend(rig, 3)
    status, headers, _ = await rig.get(READ, headers=NIGHTLY)
    assert status == 200
    assert "detail=read-budget" in headers["Cache-Status"]
    status, headers, _ = await rig.get("query?query=select%20*%20from%20Invoice", headers=NIGHTLY)
    assert (status, headers["X-QBO-Gateway-Error"]) == (429, "GW-READ-BUDGET")


async def test_off_changes_nothing_past_the_cap(make: MakeRig) -> None:
    rig = await make(coreplus_guard="off", coreplus_monthly_limit=3)
    await spend(rig, 4, NIGHTLY)
    before = qbo_reads(rig)
    status, _, _ = await rig.get(READ, headers=NIGHTLY)
    assert (status, qbo_reads(rig)) == (200, before + 1)


async def test_the_guard_lifts_when_the_month_ends(make: MakeRig) -> None:
    rig = await make(coreplus_guard="background", coreplus_monthly_limit=3)
    await spend(rig, 3)
    status, headers, _ = await rig.get(READ, headers=NIGHTLY)
    assert status == 429
    rig.clock.advance(MONTH_LEFT - 100)
    status, headers, _ = await rig.get(READ, headers=NIGHTLY)
    assert (status, headers["Retry-After"]) == (429, "100")
    rig.clock.advance(100)
    await rig.gateway.meter.refresh()
    status, _, _ = await rig.get(READ, headers=NIGHTLY)
    assert status == 200


def test_background_must_be_a_boolean(tmp_path: Path) -> None:
    from qbo_gateway.proxy.callers import CallersFileError, load_callers

    path = callers_file(tmp_path)
    assert [c.background for c in load_callers(path)] == [False, True]
    path.write_text(path.read_text().replace("background: true", "background: sometimes"))
    with pytest.raises(CallersFileError, match="background must be true or false"):
        load_callers(path)
