"""Health history stores (one suite, memory and Redis), the monitor loop, status and SLA.

The gateway around the monitor is a small fake (`FakeGateway`: plain objects standing in
for the token store, admission and the proxy's probe); time is a ManualClock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from qbo_gateway.admission.records import BreakerState, RealmLoad
from qbo_gateway.clock import ManualClock
from qbo_gateway.faults import FaultClass
from qbo_gateway.health.grading import realm_status
from qbo_gateway.health.sla import merge_incidents
from qbo_gateway.health.store_fallback import FallbackHealthStore
from qbo_gateway.health.store_memory import (
    AlertRecord,
    HealthStore,
    HistoryEntry,
    MemoryHealthStore,
)
from qbo_gateway.health.store_redis import RedisHealthStore
from qbo_gateway.health.traffic_rules import classify_outcome
from qbo_gateway.health.wiring import Health, HealthOptions, HealthSources, build_health
from qbo_gateway.metrics import Metrics
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from qbo_gateway.tokens.records import TokenStatus
from tests.redis_server import RedisServer, free_port
from tests.redis_topologies import REDIS_TARGETS, redis_target

DAY = 86400.0


@dataclass
class FakeGateway:
    """The composition root's callables, as plain objects a test can steer."""

    clock: ManualClock
    tokens: dict[str, TokenStatus] = field(default_factory=dict)
    loads: dict[str, RealmLoad] = field(default_factory=dict)
    probed: list[str] = field(default_factory=list)
    monitors: list[Health] = field(default_factory=list)
    probe_fails: set[str] = field(default_factory=set)
    probe_latency: float = 0.2

    def add_realm(self, realm_id: str, *, refresh_days: float = 90.0, **changes: object) -> None:
        now = self.clock.now()
        status = TokenStatus(
            realm_id=realm_id,
            access_expires_at=now + 3600,
            refresh_expires_at=now + refresh_days * DAY,
            refresh_hard_expires_at=None,
            needs_reconnect=False,
            version=1,
        )
        self.tokens[realm_id] = replace(status, **changes)  # type: ignore[arg-type]

    async def token_statuses(self) -> list[TokenStatus]:
        return list(self.tokens.values())

    async def token_status(self, realm_id: str) -> TokenStatus | None:
        return self.tokens.get(realm_id)

    async def load(self, realm_id: str) -> RealmLoad:
        return self.loads.get(realm_id, RealmLoad(BreakerState.CLOSED, 0, None, None, 3, 1, 0, 1))

    async def probe(self, realm_id: str, owner: str) -> None:
        """Like the proxy: a companyinfo read whose outcome reaches the observer."""
        self.probed.append(realm_id)
        await asyncio.sleep(0)
        failed = realm_id in self.probe_fails
        for monitor in self.monitors:
            if monitor.cycle.owner == owner:
                monitor.observer.request_finished(
                    realm_id,
                    outcome="upstream",
                    status=503 if failed else 200,
                    latency=self.probe_latency,
                    fault=FaultClass.UPSTREAM_FAILURE if failed else FaultClass.OK,
                    probe=True,
                )


def make_monitor(
    gw: FakeGateway,
    *,
    store: HealthStore | None = None,
    metrics: Metrics | None = None,
    interval: float = 300.0,
    history: float = DAY,
    owner: str = "replica-a",
    **kwargs: object,
) -> Health:
    wiring = {k: kwargs.pop(k) for k in ("session", "policy", "backend_up") if k in kwargs}
    monitor = build_health(
        HealthOptions(interval=interval, history_seconds=history, **kwargs),  # type: ignore[arg-type]
        store=store or MemoryHealthStore(history_seconds=history),
        clock=gw.clock,
        metrics=metrics or Metrics(CollectorRegistry()),
        sources=HealthSources(
            token_statuses=gw.token_statuses,
            token_status=gw.token_status,
            load=gw.load,
            probe=_probe_as(gw, owner),
        ),
        owner=owner,
        **wiring,  # type: ignore[arg-type]
    )
    gw.monitors.append(monitor)
    return monitor


def _probe_as(gw: FakeGateway, owner: str) -> Callable[[str], Awaitable[None]]:
    async def probe(realm_id: str) -> None:
        await gw.probe(realm_id, owner)

    return probe


def ok(monitor: Health, realm_id: str, latency: float = 0.3) -> None:
    monitor.observer.request_finished(
        realm_id, outcome="upstream", status=200, latency=latency, fault=FaultClass.OK
    )


def fail(monitor: Health, realm_id: str) -> None:
    monitor.observer.request_finished(
        realm_id,
        outcome="error",
        status=502,
        latency=0.1,
        fault=FaultClass.UPSTREAM_FAILURE,
    )


# --------------------------------------------------------------------------- stores


@pytest.fixture(params=["memory", *REDIS_TARGETS])
async def store(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[HealthStore]:
    if request.param == "memory":
        yield MemoryHealthStore(history_seconds=100.0, bucket_seconds=10.0, recent_events=5)
        return
    redis = redis_target(request, request.param).client()
    yield RedisHealthStore(
        redis,
        history_seconds=100.0,
        keys=RedisKeys(redis_prefix),
        bucket_seconds=10.0,
        recent_events=5,
    )
    await redis.aclose()


def _alert(realm: str, kind: str, severity: str, at: float, aid: str) -> AlertRecord:
    return AlertRecord(
        id=aid,
        realm_id=realm,
        kind=kind,
        severity=severity,
        state="active",
        message=f"{kind} {severity}",
        started_at=at,
        raised_at=at,
        updated_at=at,
    )


async def test_store_history_is_trimmed_by_age_and_count(store: HealthStore) -> None:
    await store.record(
        {"1": [HistoryEntry(1000.0 + i, "request", True) for i in range(3)]}, now=1003
    )
    entries = await store.history("1", since=0, limit=10)
    assert [e.at for e in entries] == [1000.0, 1001.0, 1002.0]
    # 200 s later the first batch is out of the 100 s window; the cap (5) keeps the newest.
    await store.record(
        {"1": [HistoryEntry(1200.0 + i, "check", i % 2 == 0, 200, 0.5) for i in range(8)]},
        now=1208,
    )
    entries = await store.history("1", since=0, limit=10)
    assert [e.at for e in entries] == [1203.0, 1204.0, 1205.0, 1206.0, 1207.0]
    assert entries[-1].source == "check" and entries[-1].latency == 0.5
    assert [e.at for e in await store.history("1", since=1205.5, limit=10)] == [1206.0, 1207.0]
    assert await store.history("2", since=0, limit=10) == []


async def test_store_probe_lease_busy_held_acquired(store: HealthStore) -> None:
    assert await store.acquire_probe("1", owner="a", now=1000, interval=300) == "acquired"
    assert await store.acquire_probe("1", owner="b", now=1010, interval=300) == "held"
    assert await store.acquire_probe("1", owner="b", now=1300, interval=300) == "acquired"
    # A live success seen by any replica makes the realm busy: no probe.
    await store.record({"2": [HistoryEntry(1290.0, "request", True, live=True)]}, now=1290)
    assert await store.acquire_probe("2", owner="a", now=1300, interval=300) == "busy"
    assert await store.acquire_probe("2", owner="a", now=1600, interval=300) == "acquired"


async def test_store_alert_lifecycle(store: HealthStore) -> None:
    first = await store.upsert_alert(_alert("1", "throttled", "warning", 10.0, "a1"))
    assert first.created and first.alert.id == "a1"
    again = await store.upsert_alert(_alert("1", "throttled", "warning", 11.0, "a2"))
    assert not again.created and not again.changed and again.alert.id == "a1"
    worse = await store.upsert_alert(_alert("1", "throttled", "critical", 12.0, "a3"))
    assert worse.changed and worse.alert.id == "a1" and worse.alert.severity == "critical"
    acked = await store.ack_alert("a1", at=13.0, by="ops")
    assert acked is not None and acked.state == "acknowledged" and acked.acknowledged_by == "ops"
    assert await store.ack_alert("nope", at=13.0, by="ops") is None
    resolved = await store.resolve_alert("1", "throttled", at=14.0)
    assert resolved is not None and resolved.state == "resolved" and resolved.resolved_at == 14.0
    assert resolved.acknowledged_at == 13.0
    assert await store.resolve_alert("1", "throttled", at=15.0) is None
    fresh = await store.upsert_alert(_alert("1", "throttled", "warning", 16.0, "b1"))
    assert fresh.created and fresh.alert.id == "b1"
    ids = sorted((a.id, a.state) for a in await store.alerts())
    assert ids == [("a1", "resolved"), ("b1", "active")]
    assert await store.prune(resolved_before=20.0, keep_resolved=100) == 1
    assert [a.id for a in await store.alerts()] == ["b1"]


async def test_fallback_store_serves_while_redis_is_unreachable() -> None:
    dead = make_redis(f"redis://127.0.0.1:{free_port()}/0")
    store = FallbackHealthStore(
        RedisHealthStore(dead, history_seconds=100.0),
        MemoryHealthStore(history_seconds=100.0),
    )
    await store.record({"1": [HistoryEntry(10.0, "request", True)]}, now=10)
    assert len(await store.history("1", since=0, limit=5)) == 1
    created = await store.upsert_alert(_alert("1", "throttled", "warning", 10.0, "x"))
    assert created.created
    assert [a.id for a in await store.alerts()] == ["x"]
    assert await store.acquire_probe("1", owner="a", now=10, interval=60) == "acquired"
    await dead.aclose()


async def test_monitor_keeps_working_while_redis_is_unreachable() -> None:
    gw = FakeGateway(ManualClock())
    gw.add_realm("777")
    gw.add_realm("778")
    metrics = Metrics(CollectorRegistry())
    dead = make_redis(f"redis://127.0.0.1:{free_port()}/0")
    availability = BackendAvailability(ping=dead.ping, metrics=metrics, probe_interval=60)
    store = FallbackHealthStore(
        RedisHealthStore(dead, history_seconds=DAY),
        MemoryHealthStore(history_seconds=DAY),
        availability=availability,
    )
    monitor = make_monitor(gw, store=store, metrics=metrics)
    try:
        ok(monitor, "777")
        for _ in range(2):
            fail(monitor, "778")
        await monitor.flush()
        assert not availability.up
        assert [e.ok for e in await monitor.store.history("778", since=0, limit=5)] == [
            False,
            False,
        ]
        assert [a.kind for a in await monitor.alerts.list_alerts()] == ["consecutive_failures"]
        report = await monitor.cycle.run_cycle()
        assert gw.probed == ["778"] and report.skipped_busy == 1
    finally:
        await availability.close()
        await dead.aclose()


# --------------------------------------------------------------------------- monitor


def test_classify_outcome() -> None:
    assert classify_outcome("upstream", 200, FaultClass.OK) is True
    assert classify_outcome("upstream", 400, FaultClass.CALLER_ERROR) is True
    assert classify_outcome("upstream", 503, FaultClass.UPSTREAM_FAILURE) is False
    assert classify_outcome("error", 504, None) is False
    assert classify_outcome("upstream", 429, FaultClass.THROTTLE) is None
    assert classify_outcome("rejected", 503, None) is None
    assert classify_outcome("cache_hit", 200, None) is None


async def test_monitor_skips_busy_realm_and_probes_idle_one() -> None:
    gw = FakeGateway(ManualClock())
    for realm in ("111", "222", "333"):
        gw.add_realm(realm)
    gw.add_realm("444", needs_reconnect=True)
    metrics = Metrics(CollectorRegistry())
    monitor = make_monitor(gw, metrics=metrics)
    gw.clock.advance(10)
    ok(monitor, "111")  # live traffic: 111 is busy, its health is already known
    report = await monitor.cycle.run_cycle()
    assert sorted(gw.probed) == ["222", "333"]
    assert (report.probed, report.skipped_busy, report.skipped_reconnect) == (2, 1, 1)
    assert (
        metrics.registry.get_sample_value("qbo_gateway_health_checks_total", {"result": "ok"}) == 2
    )
    # The probes landed in history as checks.
    await monitor.flush()
    checks = await monitor.store.history("222", since=0, limit=10)
    assert [(c.source, c.ok) for c in checks] == [("check", True)]
    # Next interval: nobody's traffic is recent, but nothing is against any of them (222 and
    # 333 were just checked, 111 just served), so no read is spent on them...
    gw.probed.clear()
    gw.clock.advance(300)
    report = await monitor.cycle.run_cycle()
    assert gw.probed == [] and report.skipped_no_doubt == 3
    # ...until their last success is the idle age (a day) old. A probe is not live traffic.
    gw.clock.advance(DAY - 300)
    await monitor.cycle.run_cycle()
    assert sorted(gw.probed) == ["111", "222", "333"]


async def test_failed_probes_raise_alerts_like_live_traffic() -> None:
    gw = FakeGateway(ManualClock())
    gw.add_realm("111")
    gw.probe_fails.add("111")
    monitor = make_monitor(gw, interval=60)
    for _ in range(2):
        await monitor.cycle.run_cycle()
        gw.clock.advance(60)
    alert = monitor.alerts.active_for("111")["consecutive_failures"]
    assert alert.severity == "warning"
    assert realm_status(monitor.table, monitor.alerts, "111", gw.clock.now()) == "degraded"


async def test_two_instances_on_one_redis_probe_each_realm_once_per_interval(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    gw = FakeGateway(ManualClock())
    realms = [str(1000 + i) for i in range(12)]
    for realm in realms:
        gw.add_realm(realm)
    redis = make_redis(redis_server.url)
    keys = RedisKeys(redis_prefix)

    # Minute buckets: the figures below are checked to the minute.
    def store() -> RedisHealthStore:
        return RedisHealthStore(redis, history_seconds=DAY, keys=keys, bucket_seconds=60.0)

    # Idle age 0: every idle realm is a candidate each interval (the leases are tested here,
    # not the doubt ranking).
    a = make_monitor(gw, store=store(), owner="a", bucket_seconds=60.0, probe_idle_seconds=0)
    b = make_monitor(gw, store=store(), owner="b", bucket_seconds=60.0, probe_idle_seconds=0)
    try:
        for _ in range(3):
            gw.probed.clear()
            await asyncio.gather(a.cycle.run_cycle(), b.cycle.run_cycle())
            assert sorted(gw.probed) == realms  # each realm once, shared between the two
            gw.clock.advance(100)
            await asyncio.gather(a.cycle.run_cycle(), b.cycle.run_cycle())
            assert sorted(gw.probed) == realms  # within the interval: nobody probes again
            gw.clock.advance(200)
        assert a.cycle.last_cycle is not None and b.cycle.last_cycle is not None
        # Live traffic seen by replica a makes the realm busy for replica b too.
        gw.probed.clear()
        await a.flush()
        ok(a, "1000")
        await a.flush()
        await b.cycle.run_cycle()
        await a.cycle.run_cycle()
        assert "1000" not in gw.probed and len(gw.probed) == len(realms) - 1
    finally:
        await redis.aclose()


async def test_alerts_are_shared_through_redis_and_notified_once(
    redis_server: RedisServer, redis_prefix: str, aiohttp_server: Any
) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    server = await aiohttp_server(receiver)
    gw = FakeGateway(ManualClock())
    gw.add_realm("555")
    redis = make_redis(redis_server.url)
    keys = RedisKeys(redis_prefix)
    session = aiohttp.ClientSession()
    hooked = {"webhook_url": str(server.make_url("/hook")), "session": session}
    a = make_monitor(
        gw, store=RedisHealthStore(redis, history_seconds=DAY, keys=keys), owner="a", **hooked
    )
    b = make_monitor(
        gw, store=RedisHealthStore(redis, history_seconds=DAY, keys=keys), owner="b", **hooked
    )
    await a.open(background=False)
    await b.open(background=False)
    try:
        a.observer.breaker_changed("555", BreakerState.OPEN)
        b.observer.breaker_changed("555", BreakerState.OPEN)  # the same episode seen by both
        await a.flush()
        await b.flush()
        await a.alerts.sync()
        await b.alerts.sync()
        shared = [x for x in await a.alerts.list_alerts() if x.active]
        assert len(shared) == 1
        assert a.alerts.active_for("555")["circuit_open"].id == shared[0].id
        assert b.alerts.active_for("555")["circuit_open"].id == shared[0].id
        # Replica b sees the circuit close; a learns at its next sync.
        b.observer.breaker_changed("555", BreakerState.CLOSED)
        await b.flush()
        await a.alerts.sync()
        assert a.alerts.active_for("555") == {}
        assert [x.state for x in await a.alerts.list_alerts()] == ["resolved"]
        for monitor in (a, b):
            assert monitor.alerts.notifier is not None
            await asyncio.wait_for(monitor.alerts.notifier.drained(), 10)
        # One episode seen by two replicas: raised once, resolved once.
        assert sorted(x["event"] for x in received) == ["raised", "resolved"]
        assert {x["alert"]["id"] for x in received} == {shared[0].id}
    finally:
        await a.close()
        await b.close()
        await session.close()
        await redis.aclose()


async def test_status_derivation_and_summary_counts() -> None:
    gw = FakeGateway(ManualClock())
    for realm in ("1", "2", "3", "4", "5"):
        gw.add_realm(realm)
    gw.add_realm("6", needs_reconnect=True)
    metrics = Metrics(CollectorRegistry())
    monitor = make_monitor(gw, metrics=metrics)
    await monitor.token_rules.refresh(force=True)
    ok(monitor, "1")
    for _ in range(5):
        fail(monitor, "2")  # critical consecutive failures: unhealthy
    monitor.observer.breaker_changed("3", BreakerState.OPEN)
    monitor.observer.stale_served("4", reason="upstream-error", age=30)
    summary = await monitor.views.summary()
    assert summary["realms"] == {
        "total": 6,
        "healthy": 2,
        "degraded": 1,
        "unhealthy": 2,
        "needs_reconnect": 1,
        "refresh_outcome_unknown": 0,
    }
    assert summary["status"] == "unhealthy"  # half the realms cannot reach QuickBooks
    assert summary["alerts"]["by_severity"] == {"warning": 0, "critical": 3}
    assert metrics.registry.get_sample_value("qbo_gateway_realms", {"status": "unhealthy"}) == 2
    assert (
        metrics.registry.get_sample_value("qbo_gateway_alerts_active", {"severity": "critical"})
        == 3
    )
    # The stale mark fades after an interval.
    gw.clock.advance(301)
    assert realm_status(monitor.table, monitor.alerts, "4", gw.clock.now()) == "healthy"


async def test_sla_uptime_latency_detection_and_recovery() -> None:
    gw = FakeGateway(ManualClock())
    gw.add_realm("1")
    gw.add_realm("2")
    monitor = make_monitor(gw, history=3600)
    await monitor.token_rules.refresh(force=True)
    for latency in (0.1, 0.2, 0.3, 0.4, 3.0):
        ok(monitor, "1", latency)
    gw.clock.advance(1000)
    fail(monitor, "1")
    gw.clock.advance(30)
    fail(monitor, "1")  # warning raised 30 s after the incident's first failure
    gw.clock.advance(10)
    monitor.observer.breaker_changed("1", BreakerState.OPEN)
    gw.clock.advance(80)
    monitor.observer.breaker_changed("1", BreakerState.CLOSED)  # open 80 s
    ok(monitor, "1")  # recovered 120 s after the first failure
    gw.clock.advance(2479)  # the window (3600 s) still holds the first requests
    await monitor.flush()
    board = await monitor.views.dashboard()
    sla = board["sla"]
    assert sla["window_seconds"] == 3599.0
    assert sla["incidents"] == 1
    assert sla["time_to_detect_seconds"] == {"worst": 30.0, "average": 30.0, "count": 1}
    assert sla["mttr_seconds"] == 80.0
    # Two realms over 3599 s with 120 s down on one.
    assert sla["uptime_ratio"] == pytest.approx(1 - 120 / 7198, abs=1e-6)
    assert sla["downtime_seconds"] == 120.0
    targets = sla["targets"]
    assert targets["uptime_ratio"]["met"] is False
    assert targets["time_to_recover_seconds"] == {"value": 80.0, "target": 300.0, "met": True}
    assert targets["time_to_detect_seconds"] == {"value": 30.0, "target": 60.0, "met": True}
    assert targets["avg_response_seconds"]["met"] is True
    assert sla["p95_response_seconds"] == 3.0
    assert sla["avg_response_seconds"] == pytest.approx(
        (0.1 + 0.2 + 0.3 + 0.4 + 3.0 + 0.3) / 6, 1e-3
    )
    rows = {r["realm_id"]: r for r in board["realms"]}
    assert rows["1"]["uptime_ratio"] == pytest.approx(1 - 120 / 3599, abs=1e-6)
    assert rows["2"]["uptime_ratio"] == 1.0
    detail = await monitor.business_view.business("1")
    assert detail is not None
    assert detail["sla"]["uptime_ratio"] == pytest.approx(1 - 120 / 3599, abs=1e-6)
    assert detail["sla"]["success_ratio"] == pytest.approx(6 / 8)
    assert detail["sla"]["time_to_recover_seconds"]["worst"] == 80.0
    # An hour later the window no longer holds the incident.
    gw.clock.advance(3600)
    later = await monitor.views.dashboard()
    assert later["sla"]["incidents"] == 0 and later["sla"]["uptime_ratio"] == 1.0
    assert later["sla"]["avg_response_seconds"] is None
    assert later["sla"]["targets"]["avg_response_seconds"]["met"] is None


def test_merge_incidents_overlapping_spans() -> None:
    alerts = [
        _alert("1", "consecutive_failures", "warning", 100.0, "a"),
        _alert("1", "circuit_open", "critical", 150.0, "b"),
    ]
    alerts = [
        AlertRecord(**{**alerts[0].to_dict(), "state": "resolved", "resolved_at": 200.0}),
        AlertRecord(**{**alerts[1].to_dict(), "state": "resolved", "resolved_at": 400.0}),
    ]
    inc = merge_incidents(alerts, start=0.0, now=1000.0)
    assert (inc.count, inc.downtime, inc.recoveries) == (1, 300.0, [300.0])


async def test_history_is_shared_through_redis(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    gw = FakeGateway(ManualClock())
    gw.add_realm("888")
    redis = make_redis(redis_server.url)
    keys = RedisKeys(redis_prefix)

    # Minute buckets: the figures below are checked to the minute.
    def store() -> RedisHealthStore:
        return RedisHealthStore(redis, history_seconds=DAY, keys=keys, bucket_seconds=60.0)

    a = make_monitor(gw, store=store(), owner="a", bucket_seconds=60.0)
    b = make_monitor(gw, store=store(), owner="b", bucket_seconds=60.0)
    try:
        ok(a, "888", 0.5)
        gw.clock.advance(1)
        fail(a, "888")
        await a.flush()
        detail = await b.business_view.business("888")  # replica b saw no traffic itself
        assert detail is not None
        assert [e["ok"] for e in detail["recent_events"]] == [False, True]
        assert detail["latency"]["avg_seconds"] == 0.5
        assert detail["sla"]["success_ratio"] == 0.5
    finally:
        await redis.aclose()


async def test_dashboards_of_two_replicas_follow_the_fleets_buckets(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """Replica b's dashboard keeps the day in memory: a's new traffic shows at once (the
    newest three buckets are re-read every time); downtime a spreads over older buckets when
    it resolves an outage shows in a's dashboard at once, in b's once its copy is a minute
    old."""
    gw = FakeGateway(ManualClock())
    gw.add_realm("888")
    redis = make_redis(redis_server.url)
    keys = RedisKeys(redis_prefix)

    # Minute buckets: the figures below are checked to the minute.
    def store() -> RedisHealthStore:
        return RedisHealthStore(redis, history_seconds=DAY, keys=keys, bucket_seconds=60.0)

    a = make_monitor(gw, store=store(), owner="a", bucket_seconds=60.0)
    b = make_monitor(gw, store=store(), owner="b", bucket_seconds=60.0)
    try:
        await b.token_rules.refresh(force=True)
        await a.token_rules.refresh(force=True)
        ok(a, "888")
        await a.flush()
        assert (await b.views.dashboard())["sla"]["requests"] == 1
        fail(a, "888")
        fail(a, "888")  # the outage starts (on a; b has not synced a's alerts)
        gw.clock.advance(300)
        await a.flush()
        assert (await b.views.dashboard())["sla"]["requests"] == 3  # b reads the whole day
        gw.clock.advance(10)
        ok(a, "888")  # resolved: 310 s of downtime spread over six minute buckets
        await a.flush()
        seen_by_a = (await a.views.dashboard())["sla"]
        assert seen_by_a["requests"] == 4 and seen_by_a["downtime_seconds"] == 310.0
        seen_by_b = (await b.views.dashboard())["sla"]
        # b re-read only the newest three buckets (from 180 s into the outage): 130 s.
        assert seen_by_b["requests"] == 4 and seen_by_b["downtime_seconds"] == 130.0
        gw.clock.advance(60)
        assert (await b.views.dashboard())["sla"]["downtime_seconds"] == 310.0
    finally:
        await redis.aclose()


async def test_store_write_batch_is_counts_and_events_together(store: HealthStore) -> None:
    realms = {"1": {100: {"requests": 3, "errors": 1}}, "2": {100: {"requests": 2}}}
    fleet = {100: {"requests": 5, "errors": 1}}
    events = {"2": [HistoryEntry(1000.0, "request", True, live=True)]}
    await store.write_batch(realms, fleet, events, now=1005.0)
    await store.write_batch({"1": {100: {"requests": 1}}}, {100: {"requests": 1}}, {}, now=1006.0)
    assert await store.realm_series("1", first=100, last=100) == {100: {"requests": 4, "errors": 1}}
    assert await store.realm_series("2", first=100, last=100) == {100: {"requests": 2}}
    assert await store.fleet_series(first=100, last=100) == {100: {"requests": 6, "errors": 1}}
    assert [e.at for e in await store.history("2", since=0, limit=5)] == [1000.0]
    assert await store.history("1", since=0, limit=5) == []
    # The live success in the batch marks the realm busy for the probe, as `record` does.
    assert await store.acquire_probe("2", owner="a", now=1010, interval=300) == "busy"
