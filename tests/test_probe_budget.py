"""The monitor's probe budget: its arithmetic, then whole gateways spending it.

Gateways (embedded, and Redis mode on a private redis-server) in front of the simulator on
a real socket, driven by a ManualClock both share (2027-01-15T08:00Z at the start): the
simulator's record of `companyinfo` reads is what was spent, the month's end is a clock
advance, and the month is the one of `QBO_COREPLUS_TIMEZONE`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from qbo_gateway.clock import ManualClock
from qbo_gateway.commands.check_config import check_config
from qbo_gateway.economy.probe_budget import BudgetFigures, monthly_budget
from qbo_gateway.economy.records import month_of, zone_named
from qbo_gateway.economy.report import month_report
from qbo_gateway.simulator.faults import FaultRule
from tests.cache_rig import Rig, start_rig
from tests.harness import REALM, settings_for, start_gateway, start_sim
from tests.redis_server import RedisServer

KEYS = Fernet.generate_key().decode()
DAY = 86400.0
JANUARY = month_of(1_800_000_000.0, zone_named("UTC"))  # 2027-01, 31 days
MakeRig = Callable[..., Awaitable[Rig]]


def fig(spent: int, at_day: float, *, budget: int = 31_000, guard: bool = False) -> BudgetFigures:
    return BudgetFigures(
        month=JANUARY,
        budget=budget,
        spent=spent,
        now=JANUARY.start + at_day * DAY,
        interval=300.0,
        guard=guard,
    )


# --------------------------------------------------------------------------- arithmetic


def test_the_budget_is_the_share_of_the_monthly_limit() -> None:
    assert JANUARY.label == "2027-01" and JANUARY.seconds == 31 * DAY
    assert monthly_budget(0.05, 500_000) == 25_000
    assert monthly_budget(0.0, 500_000) == 0
    assert fig(0, 10, budget=0).state == "off" and fig(0, 10, budget=0).allowance() == 0


def test_the_pace_spreads_the_budget_over_the_month() -> None:
    # 31,000 over 31 days: 1,000 a day; an interval of 300 s may spend twice its even share.
    assert fig(0, 0).paced == 0 and fig(0, 0).allowance() == 0 and fig(0, 0).state == "paced"
    assert fig(0, 10).paced == 10_000
    assert fig(0, 10).per_interval == 7  # ceil(1000 * 300 / 86400 * 2)
    # Ten days unspent are not burst at once: one interval still spends at most 7.
    assert fig(0, 10).allowance() == 7
    assert fig(9_995, 10).allowance() == 5
    assert fig(10_000, 10).allowance() == 0 and fig(10_000, 10).state == "paced"
    # The next probe is due when the pace reaches one more than was spent.
    assert fig(10_000, 10).next_due() == JANUARY.start + 10_001 * DAY / 1000
    assert fig(5, 10).next_due() == JANUARY.start + 10 * DAY


def test_a_spent_budget_and_the_guard_stop_probes_until_the_month_ends() -> None:
    spent = fig(31_000, 30)
    assert (spent.state, spent.allowance(), spent.next_due()) == ("spent", 0, JANUARY.end)
    guarded = fig(10, 30, guard=True)
    assert (guarded.state, guarded.allowance(), guarded.next_due()) == ("guard", 0, JANUARY.end)
    # Past the month's last second the pace never passes the budget.
    assert fig(30_999, 40).paced == 31_000 and fig(30_999, 40).allowance() == 1


def test_check_config_states_the_probe_budget(tmp_path: Path) -> None:
    _, notes = check_config(settings_for("http://127.0.0.1:9", tmp_path))
    assert "monitor probe budget: 25000 metered reads a month (0.05 of" in "\n".join(notes)
    _, notes = check_config(settings_for("http://127.0.0.1:9", tmp_path, probe_budget_share=0))
    assert any(
        n.startswith("warning: QBO_PROBE_BUDGET_SHARE gives the monitor no probes") for n in notes
    )


# --------------------------------------------------------------------------- whole gateways


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
        overrides.setdefault("coreplus_guard", "off")
        rig = await start_rig(aiohttp_server, tmp_path, redis_prefix, **overrides)
        made.append(rig)
        return rig

    yield build
    for rig in made:
        await rig.close()


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def companyinfo_reads(rig: Rig) -> int:
    return sum(1 for r in rig.sim.api_requests if "/companyinfo/" in r.path)


async def cycle(rig: Rig) -> int:
    """One monitor cycle; how many companyinfo reads reached the simulator."""
    before = companyinfo_reads(rig)
    await rig.gateway.health.cycle.run_cycle()
    await rig.gateway.meter.drained()
    return companyinfo_reads(rig) - before


async def budget_json(rig: Rig) -> dict[str, Any]:
    found = await rig.gateway.health.cycle.monitor_report()
    budget: dict[str, Any] = found["probe_budget"]
    return budget


async def with_realms(rig: Rig, n: int) -> list[str]:
    realms = [REALM] + [str(9_100_000_000_000_000 + i) for i in range(n - 1)]
    for realm in realms[1:]:
        await rig.add_realm(realm)
    return realms


async def test_probes_keep_to_the_pace_and_the_budget_resets_with_the_month(
    make: MakeRig,
) -> None:
    # 10 probes a month (the share of a limit large enough that the guard stays off),
    # January in New York (it ends 2027-02-01T05:00Z); 12 idle realms.
    rig = await make(probe_budget_share=0.00002, coreplus_timezone="America/New_York")
    await with_realms(rig, 12)
    budget = await budget_json(rig)
    # Mid-January (14 1/3 days of 31 gone): the pace allows 4 of the 10.
    assert (budget["month"], budget["budget"], budget["spent"], budget["paced"]) == (
        "2027-01",
        10,
        0,
        4,
    )
    assert budget["per_interval_max"] == 1 and budget["state"] == "spending"
    assert await cycle(rig) == 1  # one interval spends at most one: no burst of the four
    assert await cycle(rig) == 0  # the same interval: the budget's lease is taken
    for _ in range(3):
        rig.clock.advance(300)
        assert await cycle(rig) == 1
    rig.clock.advance(300)
    assert await cycle(rig) == 0  # four spent: the pace allows no more yet
    budget = await budget_json(rig)
    assert (budget["spent"], budget["state"]) == (4, "paced")
    # No monitor running, no probe announced; with its next cycle in five minutes, the
    # fifth is due when half of January (in New York) has passed. (The loop itself is not
    # started: a ManualClock's sleep would run its cycles back to back.)
    assert budget["next_probe_due"] is None
    month = month_of(rig.clock.now(), zone_named("America/New_York"))
    assert budget["resets_at"] == "2027-02-01T05:00:00Z" == iso(month.end)
    spend = rig.gateway.health.cycle.budget
    assert spend is not None
    later = await spend.report(rig.clock.now() + 300)
    assert later["next_probe_due"] == iso(month.start + month.seconds / 2)
    summary = await rig.gateway.health.views.summary()
    assert summary["monitor"]["probe_budget"]["spent"] == 4
    dashboard = await rig.gateway.health.views.dashboard()
    assert dashboard["monitor"]["probe_budget"]["budget"] == 10

    # Days pass without a cycle: the unspent pace is not burst at once.
    rig.clock.advance(10 * DAY)
    assert await cycle(rig) == 1
    # An operator's checks are probes too: they spend the budget, and once it is spent
    # cycles stop until the month turns.
    for realm in (REALM,) * 5:
        await rig.gateway.health.check_now(realm)
    await rig.gateway.meter.drained()
    budget = await budget_json(rig)
    assert (budget["spent"], budget["remaining"], budget["state"]) == (10, 0, "spent")
    assert budget["next_probe_due"] is None
    rig.clock.advance(300)
    assert await cycle(rig) == 0
    assert (await month_report(rig.gateway.meter, guard="off"))["probe_calls"] == 10
    assert companyinfo_reads(rig) == 10

    # 2027-02-01T04:00Z is still January in New York: nothing more.
    rig.clock.advance(month.end - 3600 - rig.clock.now())
    assert await cycle(rig) == 0
    assert (await budget_json(rig))["month"] == "2027-01"
    # At 05:00Z February begins there: a new budget of 10, nothing spent, at February's
    # pace (10 in 28 days: the first once 2.8 days have passed).
    rig.clock.advance(3600 + 3600)
    budget = await budget_json(rig)
    assert (budget["month"], budget["spent"], budget["state"]) == ("2027-02", 0, "paced")
    assert await cycle(rig) == 0
    rig.clock.advance(3 * DAY)
    assert (await budget_json(rig))["state"] == "spending"
    assert await cycle(rig) == 1
    assert (await budget_json(rig))["spent"] == 1


async def test_no_probe_while_the_guard_is_on(make: MakeRig) -> None:
    # Limit 100: 47 reads by mid-month project past it (used x 31 / 14.33).
    rig = await make(coreplus_monthly_limit=100, probe_budget_share=0.5)
    await with_realms(rig, 3)
    for _ in range(47):
        status, _, _ = await rig.get("customer/1")
        assert status == 200
    await rig.gateway.meter.drained()
    budget = await budget_json(rig)
    assert rig.gateway.meter.guard_active and budget["state"] == "guard"
    rig.clock.advance(3600)
    assert await cycle(rig) == 0
    assert (await budget_json(rig))["next_probe_due"] is None


async def test_token_health_comes_from_the_store_never_from_a_probe(make: MakeRig) -> None:
    rig = await make()
    realms = await with_realms(rig, 3)
    assert await cycle(rig) == 3  # never checked since start: each probed once
    # One realm's refresh token now ends in two days and its access token has expired;
    # another realm fails a live read.
    now = rig.clock.now()
    pair = rig.sim.add_realm(realms[1])
    await rig.gateway.tokens.import_tokens(
        realms[1], pair.refresh_token, None, None, force=True, refresh_expires_at=now + 2 * DAY
    )
    rig.clock.advance(600)
    rig.sim.inject(FaultRule("server_error", realm_id=realms[2], times=10))
    status, _, _ = await rig.get("customer/1", realm=realms[2])
    assert status >= 500
    rig.sim.clear_faults()
    rig.clock.advance(600)
    before = [r.path for r in rig.sim.api_requests]
    assert await cycle(rig) == 1
    probed = [r.path for r in rig.sim.api_requests][len(before) :]
    assert probed == [f"/v3/company/{realms[2]}/companyinfo/{realms[2]}"]
    # The token's health is reported all the same, from the token store.
    summary = await rig.gateway.health.views.summary()
    kinds = {(a["realm_id"], a["kind"]) for a in summary["alerts"]["items"]}
    assert (realms[1], "refresh_token_expiring") in kinds
    view = await rig.gateway.health.business_view.business(realms[1])
    assert view["token"]["refresh_expires_at"] is not None
    assert view["token"]["access_expires_at"] is not None


async def test_two_replicas_on_one_redis_share_one_budget(
    aiohttp_server: Any, tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> None:
    clock = ManualClock()
    sim, sim_server = await start_sim(aiohttp_server, clock=clock.now)
    realms = [str(9_100_000_000_000_000 + i) for i in range(6)]
    pairs = {realm: sim.add_realm(realm) for realm in realms}
    shared = {
        "redis_url": redis_server.url,
        "token_keys": KEYS,
        "probe_budget_share": 0.00002,  # 10 a month: at most one probe an interval
    }
    gateways = []
    for name in ("a", "b"):
        gateway, *_ = await start_gateway(
            aiohttp_server,
            sim,
            sim_server,
            tmp_path / name,
            clock=clock,
            redis_prefix=redis_prefix,
            **shared,
        )
        gateways.append(gateway)
    a, b = gateways
    try:
        for realm, pair in pairs.items():
            await a.tokens.import_tokens(
                realm, pair.refresh_token, pair.access_token, pair.access_expires_at
            )

        def reads() -> int:
            return sum(1 for r in sim.api_requests if "/companyinfo/" in r.path)

        async def both() -> int:
            before = reads()
            for gateway in (a, b):
                await gateway.health.cycle.run_cycle()
                await gateway.meter.drained()
            return reads() - before

        # One interval, two replicas: one probe between them (one holds the budget's lease).
        assert await both() == 1
        clock.advance(300)
        assert await both() == 1
        clock.advance(300)
        assert await both() == 1
        clock.advance(300)
        assert await both() == 1
        clock.advance(300)
        assert await both() == 0  # the fleet spent the four the pace allows by now
        for gateway in (a, b):
            budget = (await gateway.health.cycle.monitor_report())["probe_budget"]
            assert (budget["spent"], budget["paced"], budget["state"]) == (4, 4, "paced")
        assert reads() == 4
    finally:
        for gateway in gateways:
            await gateway.close()
