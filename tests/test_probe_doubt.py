"""Which idle realms the monitor probes first: the doubt ranking, driven by the injected clock.

Events reach a real health monitor through its observer (as the proxy and token manager
report them); the ranking and the cycle read the realm table it keeps. The budget here is a
fixed allowance per cycle (the probe budget itself is tested in test_probe_budget.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from qbo_gateway.admission.records import BreakerState
from qbo_gateway.clock import ManualClock
from qbo_gateway.health.probe_doubt import WEIGHTS, rank
from qbo_gateway.health.wiring import Health
from tests.test_health import DAY, FakeGateway, fail, make_monitor, ok


class FixedAllowance:
    """A budget that allows `per_cycle` probes each cycle and records what it was told."""

    def __init__(self, per_cycle: int) -> None:
        self.per_cycle = per_cycle
        self.launched_total = 0

    async def allowance(self, *, owner: str, interval: float) -> int:
        return self.per_cycle

    def launched(self, n: int) -> None:
        self.launched_total += n

    async def report(self, next_cycle_at: float | None) -> dict[str, Any]:
        return {"per_cycle": self.per_cycle}


def probe_ok(monitor: Health, realm_id: str) -> None:
    monitor.observer.request_finished(
        realm_id, outcome="upstream", status=200, latency=0.2, fault=None, probe=True
    )


async def fleet() -> tuple[FakeGateway, Health]:
    """Ten realms, each with one story, told over two days of the injected clock."""
    gw = FakeGateway(ManualClock())
    for realm in ("busy", "fail", "open", "thr", "recon", "unknown", "new", "old", "fresh"):
        gw.add_realm(realm)
    gw.add_realm("expiring", refresh_days=2.0, access_expires_at=0.0)  # only its token ages
    gw.add_realm("gone", needs_reconnect=True)
    monitor = make_monitor(gw)
    await monitor.token_rules.refresh(force=True)
    for realm in ("busy", "fail", "open", "thr", "recon", "unknown", "old", "fresh", "expiring"):
        ok(monitor, realm)
    gw.clock.advance(DAY)  # "old" succeeded a day ago and nothing since
    for realm in ("fail", "open", "thr", "recon", "unknown", "fresh", "expiring"):
        probe_ok(monitor, realm)
    gw.clock.advance(600)
    fail(monitor, "fail")
    monitor.observer.breaker_changed("open", BreakerState.OPEN)
    monitor.observer.throttled("thr", until=gw.clock.now() + 60)
    monitor.observer.token_event("recon", "reconnected")
    # A token call's answer was lost (the token store says so): the realm's reads may fail.
    gw.tokens["unknown"] = replace(gw.tokens["unknown"], refresh_outcome_unknown=True)
    gw.clock.advance(300)  # thr's cool-down is over; its throttle is still a doubt
    monitor.cycle.expire_throttles(gw.clock.now())
    ok(monitor, "busy")
    await monitor.token_rules.refresh(force=True)
    return gw, monitor


async def test_realms_are_ranked_by_doubt_and_token_age_is_no_doubt() -> None:
    gw, monitor = await fleet()
    circuits = {
        realm
        for realm, kinds in monitor.alerts.realms_with_alerts().items()
        if "circuit_open" in kinds
    }
    ranking = rank(monitor.table, circuit_alerts=circuits, now=gw.clock.now(), idle_seconds=DAY)
    order = [(d.realm_id, d.reasons) for d in ranking.candidates]
    assert order == [
        ("open", ("breaker_not_closed",)),
        ("fail", ("failing",)),
        ("recon", ("reconnected",)),
        ("unknown", ("refresh_outcome_unknown",)),
        ("thr", ("throttled",)),
        ("new", ("never_checked", "idle")),  # never seen: oldest of all
        ("old", ("idle",)),
    ]
    assert [d.score for d in ranking.candidates] == [128, 64, 32, 8, 4, 3, 1]
    for weight in WEIGHTS.values():
        assert weight > sum(w for w in WEIGHTS.values() if w < weight)
    # busy: its traffic is the probe; gone: needs a person; fresh and expiring: nothing
    # against them (an expiring refresh token and an expired access token are token
    # health, which the token store reports, not a reason to spend a read).
    assert (ranking.busy, ranking.reconnect, ranking.no_doubt) == (1, 1, 2)
    assert "refresh_token_expiring" in monitor.alerts.active_for("expiring")
    assert monitor.table.tokens["expiring"].access_expires_at == 0.0


async def test_the_cycle_probes_the_most_doubtful_first_within_its_allowance() -> None:
    gw, monitor = await fleet()
    budget = FixedAllowance(3)
    monitor.cycle.budget = budget
    report = await monitor.cycle.run_cycle()
    assert gw.probed == ["open", "fail", "recon"]
    assert (report.candidates, report.allowance, report.probed, report.skipped_budget) == (
        7,
        3,
        3,
        4,
    )
    assert budget.launched_total == 3
    assert report.to_json()["reasons"] == {"breaker_not_closed": 1, "failing": 1, "reconnected": 1}
    # The probes succeeded: those doubts are settled, the next most doubtful come next.
    gw.probed.clear()
    gw.clock.advance(300)
    await monitor.cycle.run_cycle()
    assert gw.probed == ["unknown", "thr", "new"]
    gw.probed.clear()
    gw.clock.advance(300)
    await monitor.cycle.run_cycle()
    assert gw.probed == ["old"]  # then nothing is left in doubt: nothing is spent
    gw.probed.clear()
    gw.clock.advance(300)
    report = await monitor.cycle.run_cycle()
    assert gw.probed == [] and report.candidates == 0 and report.allowance is None
    summary = await monitor.views.summary()
    assert summary["monitor"]["probe_budget"] == {"per_cycle": 3}
