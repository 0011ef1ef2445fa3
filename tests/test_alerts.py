"""Every alert rule with an injected clock: raise, dedupe, auto-resolve, acknowledge; and
webhook delivery with retries against a real local HTTP receiver that fails at first."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from qbo_gateway.admission.records import BreakerState, RealmLoad
from qbo_gateway.clock import ManualClock
from qbo_gateway.health.alert_rules import (
    AlertThresholds,
    expiry_severity,
    failures_severity,
    slow_severity,
)
from qbo_gateway.health.grading import realm_status
from qbo_gateway.health.store_memory import AlertRecord
from qbo_gateway.health.wiring import Health
from qbo_gateway.metrics import Metrics
from qbo_gateway.tokens.records import TokenRecord
from tests.test_health import DAY, FakeGateway, fail, make_monitor, ok

T = AlertThresholds()


def test_rule_thresholds() -> None:
    assert [failures_severity(n, T) for n in (0, 1, 2, 4, 5, 9)] == [
        None,
        None,
        "warning",
        "warning",
        "critical",
        "critical",
    ]
    assert [slow_severity(s, T) for s in (None, 1.0, 5.0, 5.01, 10.0, 10.01)] == [
        None,
        None,
        None,
        "warning",
        "warning",
        "critical",
    ]
    left = [15 * DAY, 14 * DAY - 1, 3 * DAY, 3 * DAY - 1, -5.0]
    assert [expiry_severity(s, T) for s in left] == [
        None,
        "warning",
        "warning",
        "critical",
        "critical",
    ]


async def alerts_of(monitor: Health, kind: str) -> list[AlertRecord]:
    await monitor.flush()
    return [a for a in await monitor.alerts.list_alerts() if a.kind == kind]


async def check_ack(monitor: Health, kind: str) -> AlertRecord:
    """Ack the one active alert of `kind`: it stays active (acknowledged), same id."""
    (alert,) = [a for a in await alerts_of(monitor, kind) if a.active]
    acked = await monitor.alerts.ack(alert.id, by="oncall")
    assert acked is not None and acked.id == alert.id
    assert acked.state == "acknowledged" and acked.acknowledged_by == "oncall"
    assert monitor.alerts.active_for(alert.realm_id)[kind].state == "acknowledged"
    return acked


def setup(**kwargs: Any) -> tuple[FakeGateway, Health, Metrics]:
    gw = FakeGateway(ManualClock())
    gw.add_realm("123")
    metrics = Metrics(CollectorRegistry())
    return gw, make_monitor(gw, metrics=metrics, **kwargs), metrics


async def test_consecutive_failures_raise_escalate_dedupe_resolve_ack() -> None:
    gw, monitor, metrics = setup()
    fail(monitor, "123")
    assert await alerts_of(monitor, "consecutive_failures") == []
    first_failure = gw.clock.now()
    gw.clock.advance(5)
    fail(monitor, "123")
    (alert,) = await alerts_of(monitor, "consecutive_failures")
    assert (alert.severity, alert.state, alert.started_at) == ("warning", "active", first_failure)
    assert alert.raised_at == gw.clock.now()  # raised by live traffic, at once
    await check_ack(monitor, "consecutive_failures")
    for _ in range(3):
        fail(monitor, "123")
    (same,) = await alerts_of(monitor, "consecutive_failures")
    assert same.id == alert.id and same.severity == "critical"
    assert same.state == "acknowledged"  # escalation keeps the acknowledgement
    gauge = metrics.registry.get_sample_value
    assert gauge("qbo_gateway_alerts_active", {"severity": "critical"}) == 1
    for _ in range(5):
        fail(monitor, "123")
    assert len(await alerts_of(monitor, "consecutive_failures")) == 1  # dedupe
    gw.clock.advance(60)
    ok(monitor, "123")
    (resolved,) = await alerts_of(monitor, "consecutive_failures")
    assert resolved.state == "resolved" and resolved.resolved_at == gw.clock.now()
    assert gauge("qbo_gateway_alerts_active", {"severity": "critical"}) == 0
    # A new run of failures is a new episode, a new alert.
    fail(monitor, "123")
    fail(monitor, "123")
    episodes = await alerts_of(monitor, "consecutive_failures")
    assert len(episodes) == 2 and len({a.id for a in episodes}) == 2


async def test_slow_responses_raise_escalate_dedupe_resolve_ack() -> None:
    _gw, monitor, _ = setup()
    ok(monitor, "123", 1.0)
    assert await alerts_of(monitor, "slow_responses") == []
    ok(monitor, "123", 15.0)  # mean of the last responses: 8 s
    (alert,) = await alerts_of(monitor, "slow_responses")
    assert alert.severity == "warning"
    ok(monitor, "123", 8.0)  # still slow: the same alert, no new one
    assert [a.id for a in await alerts_of(monitor, "slow_responses")] == [alert.id]
    await check_ack(monitor, "slow_responses")
    for _ in range(4):
        ok(monitor, "123", 14.0)
    (worse,) = await alerts_of(monitor, "slow_responses")
    assert worse.id == alert.id and worse.severity == "critical"
    for _ in range(5):
        ok(monitor, "123", 0.4)
    (done,) = await alerts_of(monitor, "slow_responses")
    assert done.state == "resolved"
    # Refused or cached answers say nothing about QBO's speed.
    monitor.observer.request_finished(
        "123", outcome="cache_hit", status=200, latency=30.0, fault=None
    )
    assert not [a for a in await alerts_of(monitor, "slow_responses") if a.active]


async def test_circuit_open_raise_dedupe_resolve_ack() -> None:
    _gw, monitor, _ = setup()
    monitor.observer.breaker_changed("123", BreakerState.OPEN)
    (alert,) = await alerts_of(monitor, "circuit_open")
    assert alert.severity == "critical"
    await check_ack(monitor, "circuit_open")
    monitor.observer.breaker_changed("123", BreakerState.HALF_OPEN)  # still recovering: same alert
    monitor.observer.breaker_changed("123", BreakerState.OPEN)
    assert [a.id for a in await alerts_of(monitor, "circuit_open")] == [alert.id]
    monitor.observer.breaker_changed("123", BreakerState.CLOSED)
    (done,) = await alerts_of(monitor, "circuit_open")
    assert done.state == "resolved"


async def test_circuit_open_resolved_by_monitor_when_another_replica_closed_it() -> None:
    gw, monitor, _ = setup()
    monitor.observer.breaker_changed("123", BreakerState.OPEN)
    gw.loads["123"] = RealmLoad(BreakerState.OPEN, 5, gw.clock.now() + 300, None, 0, 0, 0, 2)
    await monitor.cycle.run_cycle()
    assert "circuit_open" in monitor.alerts.active_for("123")
    gw.loads["123"] = RealmLoad(BreakerState.CLOSED, 0, None, None, 0, 0, 0, 3)
    gw.clock.advance(300)
    await monitor.cycle.run_cycle()
    assert [a.state for a in await alerts_of(monitor, "circuit_open")] == ["resolved"]


def _record(gw: FakeGateway, **changes: Any) -> TokenRecord:
    now = gw.clock.now()
    base = TokenRecord(
        realm_id="123",
        access_token="a",
        refresh_token="r",
        access_expires_at=now + 3600,
        refresh_expires_at=now + 100 * DAY,
        version=2,
        updated_at=now,
    )
    return base.with_changes(**changes)


async def test_reconnect_required_raise_dedupe_resolve_ack() -> None:
    gw, monitor, _ = setup()
    monitor.observer.token_event("123", "refresh_failed")
    monitor.observer.token_event("123", "reconnect_required", _record(gw, needs_reconnect=True))
    monitor.observer.token_event("123", "reconnect_required")
    (alert,) = await alerts_of(monitor, "reconnect_required")
    assert alert.severity == "critical"
    assert realm_status(monitor.table, monitor.alerts, "123", gw.clock.now()) == "needs_reconnect"
    # The refresh is no longer "failing, retried": it is a reconnect.
    assert [a.state for a in await alerts_of(monitor, "refresh_failing")] == ["resolved"]
    await check_ack(monitor, "reconnect_required")
    monitor.observer.token_event("123", "reconnected", _record(gw))
    (done,) = await alerts_of(monitor, "reconnect_required")
    assert done.state == "resolved"
    assert realm_status(monitor.table, monitor.alerts, "123", gw.clock.now()) == "healthy"


async def test_reconnect_required_found_by_monitor_from_token_state() -> None:
    gw, monitor, _ = setup()
    gw.add_realm("123", needs_reconnect=True)
    await monitor.cycle.run_cycle()
    assert [a.severity for a in await alerts_of(monitor, "reconnect_required")] == ["critical"]
    gw.add_realm("123")
    gw.clock.advance(300)
    await monitor.cycle.run_cycle()
    assert [a.state for a in await alerts_of(monitor, "reconnect_required")] == ["resolved"]


async def test_refresh_failing_raise_dedupe_resolve_ack() -> None:
    gw, monitor, _ = setup()
    await monitor.token_rules.refresh(force=True)
    monitor.observer.token_event("123", "refresh_failed")
    monitor.observer.token_event("123", "refresh_failed")
    (alert,) = await alerts_of(monitor, "refresh_failing")
    assert alert.severity == "warning" and "still valid" in alert.message
    assert realm_status(monitor.table, monitor.alerts, "123", gw.clock.now()) == "degraded"
    await check_ack(monitor, "refresh_failing")
    gw.clock.advance(30)
    monitor.observer.token_event("123", "refreshed", _record(gw))
    (done,) = await alerts_of(monitor, "refresh_failing")
    assert done.state == "resolved"


async def test_refresh_token_expiring_warning_critical_hard_expiry_resolve_ack() -> None:
    gw, monitor, _ = setup()
    gw.add_realm("123", refresh_days=20)
    await monitor.token_rules.refresh(force=True)
    assert await alerts_of(monitor, "refresh_token_expiring") == []
    gw.clock.advance(7 * DAY)  # 13 days left
    await monitor.token_rules.refresh(force=True)
    (alert,) = await alerts_of(monitor, "refresh_token_expiring")
    assert alert.severity == "warning"
    await monitor.token_rules.refresh(force=True)
    assert len(await alerts_of(monitor, "refresh_token_expiring")) == 1
    await check_ack(monitor, "refresh_token_expiring")
    gw.clock.advance(11 * DAY)  # 2 days left
    await monitor.token_rules.refresh(force=True)
    (worse,) = await alerts_of(monitor, "refresh_token_expiring")
    assert worse.id == alert.id and worse.severity == "critical"
    # A refresh rolls the expiry forward: the condition clears.
    monitor.observer.token_event("123", "refreshed", _record(gw))
    (done,) = await alerts_of(monitor, "refresh_token_expiring")
    assert done.state == "resolved"
    # The opt-in hard expiry counts too, even when the rolling expiry is far away.
    record = _record(gw, refresh_hard_expires_at=gw.clock.now() + 2 * DAY)
    monitor.observer.token_event("123", "refreshed", record)
    hard = [a for a in await alerts_of(monitor, "refresh_token_expiring") if a.active]
    assert [a.severity for a in hard] == ["critical"] and "hard expiry" in hard[0].message


async def test_throttled_raise_dedupe_resolve_ack() -> None:
    gw, monitor, _ = setup()
    until = gw.clock.now() + 60
    monitor.observer.throttled("123", until=until)
    monitor.observer.throttled("123", until=until)
    (alert,) = await alerts_of(monitor, "throttled")
    assert alert.severity == "warning"
    await check_ack(monitor, "throttled")
    gw.clock.advance(30)
    await monitor.cycle.housekeeping()
    assert [a.state for a in await alerts_of(monitor, "throttled")] == ["acknowledged"]
    gw.clock.advance(31)
    await monitor.cycle.housekeeping()  # the cool-down is over: resolved without any traffic
    assert [a.state for a in await alerts_of(monitor, "throttled")] == ["resolved"]
    monitor.observer.throttled("123", until=gw.clock.now() + 10)
    gw.clock.advance(11)
    ok(monitor, "123")  # live traffic after the cool-down resolves it at once
    assert [a.state for a in await alerts_of(monitor, "throttled")] == ["resolved", "resolved"]


async def test_ack_unknown_alert_and_removed_realm() -> None:
    gw, monitor, _ = setup()
    assert await monitor.alerts.ack("nope") is None
    monitor.observer.throttled("123", until=gw.clock.now() + 60)
    monitor.observer.token_event("123", "removed")
    assert [a.state for a in await alerts_of(monitor, "throttled")] == ["resolved"]


# --------------------------------------------------------------------------- webhook


class Receiver:
    """A real HTTP endpoint that answers 500 to the first `failures` posts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[dict[str, Any]] = []
        self.got_success = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(await request.json())
        if len(self.calls) <= self.failures:
            return web.Response(status=500, text="not yet")
        self.got_success.set()
        return web.Response(status=204)


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_webhook_delivery_retries_with_backoff_until_received(
    aiohttp_server: Any, session: aiohttp.ClientSession
) -> None:
    receiver = Receiver(failures=2)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    gw, monitor, metrics = setup(webhook_url=str(server.make_url("/hook")), session=session)
    await monitor.open(background=False)
    try:
        started = gw.clock.now()
        fail(monitor, "123")
        fail(monitor, "123")  # raises the alert; returns at once, delivery is background
        assert monitor.alerts.active_for("123")["consecutive_failures"].severity == "warning"
        await asyncio.wait_for(receiver.got_success.wait(), 10)
        assert len(receiver.calls) == 3
        body = receiver.calls[-1]
        assert body["event"] == "raised"
        assert body["alert"]["kind"] == "consecutive_failures"
        assert body["alert"]["severity"] == "warning"
        assert "consecutive_failures" in body["text"] and "WARNING" in body["text"]
        # Backoff 1 s then 2 s, on the injected clock.
        assert gw.clock.now() - started == pytest.approx(3.0)
        sample = metrics.registry.get_sample_value
        assert sample("qbo_gateway_alert_deliveries_total", {"result": "retry"}) == 2
        assert sample("qbo_gateway_alert_deliveries_total", {"result": "success"}) == 1
        await monitor.flush()
        board = await monitor.views.dashboard()
        # Both failures came at one instant: detected at once, delivered after the backoff.
        detect = board["sla"]["targets"]["time_to_detect_seconds"]
        assert detect["value"] == 0.0 and detect["met"] is True
        deliver = board["sla"]["targets"]["time_to_deliver_seconds"]
        assert deliver["value"] == pytest.approx(3.0) and deliver["met"] is True
        # Resolution is delivered too.
        receiver.got_success.clear()
        ok(monitor, "123")
        await asyncio.wait_for(receiver.got_success.wait(), 10)
        assert receiver.calls[-1]["event"] == "resolved"
    finally:
        await monitor.close()


async def test_webhook_gives_up_after_retries_without_touching_requests(
    aiohttp_server: Any, session: aiohttp.ClientSession
) -> None:
    receiver = Receiver(failures=100)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    _gw, monitor, metrics = setup(webhook_url=str(server.make_url("/hook")), session=session)
    await monitor.open(background=False)
    try:
        monitor.observer.breaker_changed("123", BreakerState.OPEN)
        await monitor.flush()
        assert monitor.alerts.notifier is not None
        await asyncio.wait_for(monitor.alerts.notifier.drained(), 10)
        assert len(receiver.calls) == 5
        sample = metrics.registry.get_sample_value
        assert sample("qbo_gateway_alert_deliveries_total", {"result": "failure"}) == 1
        # The request path kept working all along.
        ok(monitor, "123")
        assert monitor.alerts.active_for("123")["circuit_open"].severity == "critical"
    finally:
        await monitor.close()
