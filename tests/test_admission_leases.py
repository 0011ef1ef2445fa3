"""Quota leases: several replicas (each its own client) on one real Redis, of every topology.

Every replica is a `LeasedAdmission` over its own `RedisAdmission`; time is one ManualClock.
A "send" is the moment a request would reach QBO (its admission time plus any delay, in
integer microseconds as the scripts count), and the tests check the limits on those sends
in every rolling window, across all replicas.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from qbo_gateway.admission.backend_redis import RedisAdmission
from qbo_gateway.admission.leases import LeasedAdmission
from qbo_gateway.admission.records import (
    Admission,
    AdmissionPolicy,
    BreakerState,
    LeaseAsk,
    LeaseGrant,
    Outcome,
    RefusalReason,
    Verdict,
)
from qbo_gateway.clock import ManualClock
from qbo_gateway.metrics import Metrics
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import RedisClient, make_redis
from tests.redis_server import RedisServer
from tests.redis_topologies import REDIS_TARGETS, redis_target

REALM = "9130350000000077"
LEASE = 0.5


class Counted(RedisAdmission):
    """RedisAdmission that counts its calls, and which lease calls a request waited for."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.calls: dict[str, int] = {"admit": 0, "record": 0, "lease": 0, "lease_waited": 0}
        self.in_request = False

    async def admit(self, realm_id: str, *, batch: bool = False) -> Admission:
        self.calls["admit"] += 1
        return await super().admit(realm_id, batch=batch)

    async def record(
        self,
        realm_id: str,
        admission: Admission,
        outcome: Outcome,
        *,
        retry_after: float | None = None,
    ) -> BreakerState | None:
        self.calls["record"] += 1
        return await super().record(realm_id, admission, outcome, retry_after=retry_after)

    async def lease(self, realm_id: str, holder: str, ask: LeaseAsk) -> LeaseGrant | None:
        self.calls["lease"] += 1
        # A lease started inside a request's admit (before it returned) is one it waited for;
        # a background top-up only starts once the admit has returned.
        self.calls["lease_waited"] += self.in_request
        return await super().lease(realm_id, holder, ask)


@dataclass
class Replica:
    leased: LeasedAdmission
    redis: Counted
    metrics: Metrics
    sends: list[int] = field(default_factory=list)  # microseconds
    leased_sends: int = 0

    async def admit(self, clock: ManualClock, batch: bool = False) -> Admission:
        self.redis.in_request = True
        admits_before = self.redis.calls["admit"]
        try:
            admission = await self.leased.admit(REALM, batch=batch)
        finally:
            self.redis.in_request = False
        if admission.verdict is Verdict.ADMIT:
            self.sends.append(round(clock.now() * 1e6) + round(admission.delay * 1e6))
            self.leased_sends += self.redis.calls["admit"] == admits_before
        return admission


Factory = Callable[..., Awaitable[list[Replica]]]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=REDIS_TARGETS)
async def make_replicas(
    request: pytest.FixtureRequest, redis_prefix: str, clock: ManualClock
) -> AsyncIterator[Factory]:
    clients: list[RedisClient] = []
    made: list[Replica] = []
    target = redis_target(request, request.param)

    async def make(policy: AdmissionPolicy, n: int = 1) -> list[Replica]:
        out = []
        for i in range(n):
            client = target.client()
            clients.append(client)
            redis = Counted(
                client, policy, keys=RedisKeys(redis_prefix), clock=clock, lease_seconds=LEASE
            )
            metrics = Metrics()
            leased = LeasedAdmission(
                redis,
                policy,
                clock=clock,
                lease_seconds=LEASE,
                holder=f"replica{i}",
                metrics=metrics,
            )
            out.append(Replica(leased, redis, metrics))
        made.extend(out)
        return out

    yield make
    for replica in made:
        await replica.leased.drain()
    for client in clients:
        await client.aclose()


def worst_window(sends: list[int], window: float) -> int:
    """The most sends in any rolling window (a fullest window starts at a send)."""
    times, span = sorted(sends), round(window * 1e6)
    return max((sum(1 for t in times if s <= t < s + span) for s in times), default=0)


async def test_a_steady_stream_waits_on_redis_once(
    make_replicas: Factory, clock: ManualClock
) -> None:
    (r,) = await make_replicas(AdmissionPolicy(per_minute=500, per_second=10, concurrency=10))
    for _ in range(100):  # 5 requests a second for 20 s
        admission = await r.admit(clock)
        assert admission.verdict is Verdict.ADMIT and admission.delay == 0
        await r.leased.record(REALM, admission, Outcome.SUCCESS)
        await r.leased.drain()  # the background lease lands between two requests
        clock.advance(0.2)
    assert r.redis.calls["lease_waited"] == 1  # the very first request only
    assert r.redis.calls["admit"] == 0 and r.redis.calls["record"] == 0
    paths = {
        path: r.metrics.registry.get_sample_value("qbo_gateway_admissions_total", {"path": path})
        for path in ("leased", "lease_wait", "per_request")
    }
    assert paths == {"leased": 99, "lease_wait": 1, "per_request": 0}
    # One lease at least every lease period (it lasts 0.5 s), asked halfway through it.
    assert r.redis.calls["lease"] <= 70
    load = await r.leased.load(REALM)
    assert load.breaker is BreakerState.CLOSED and 1 <= load.in_flight <= 3  # held, idle
    clock.advance(LEASE)
    await r.leased.tick()  # the stream stopped: the lease ends and goes back
    load = await r.leased.load(REALM)
    assert (load.in_flight, load.requests_last_minute) == (0, 100)


# Requests per replica per 0.1 s, drawn from these: far above the limits (most refused, the
# per-request path deciding), and below them (nearly all leased).
OVERLOAD = (0, 0, 1, 1, 2, 3)
STEADY = (0,) * 14 + (1,)


@pytest.mark.parametrize(("demand", "min_leased"), [(OVERLOAD, 0.02), (STEADY, 0.6)])
async def test_replicas_never_exceed_any_limit(
    make_replicas: Factory, clock: ManualClock, demand: tuple[int, ...], min_leased: float
) -> None:
    policy = AdmissionPolicy(per_minute=200, per_second=6, concurrency=4, max_wait=2)
    replicas = await make_replicas(policy, 3)
    rnd = random.Random(7)
    running: list[tuple[float, Replica, Admission]] = []  # (ends at, replica, admission)
    peak = 0
    for step in range(1500):  # 150 s in 0.1 s steps
        now = clock.now()
        for end, replica, admission in [x for x in running if x[0] <= now]:
            running.remove((end, replica, admission))
            await replica.leased.record(REALM, admission, Outcome.SUCCESS)
        for replica in replicas:
            for _ in range(rnd.choice(demand)):
                admission = await replica.admit(clock, batch=rnd.random() < 0.05)
                if admission.verdict is Verdict.ADMIT:
                    hold = admission.delay + rnd.choice((0.05, 0.1, 0.3, 0.8))
                    running.append((now + hold, replica, admission))
        # Requests admitted now are in flight until they end (a delayed one holds its slot).
        peak = max(peak, len(running))
        if step % 3 == 0:
            for replica in replicas:
                await replica.leased.drain()
        if step % 5 == 0:
            for replica in replicas:
                await replica.leased.tick()
        clock.advance(0.1)
    sends = [t for r in replicas for t in r.sends]
    assert peak <= policy.concurrency
    assert worst_window(sends, 1.0) <= policy.per_second
    assert worst_window(sends, 60.0) <= policy.per_minute
    assert len(sends) >= 120  # the budget was used, not only refused
    assert sum(r.leased_sends for r in replicas) >= min_leased * len(sends)


async def test_exactly_one_probe_fleet_wide_with_leases_out(
    make_replicas: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(failure_threshold=3, recovery_seconds=60, concurrency=50)
    replicas = await make_replicas(policy, 3)
    for r in replicas:  # every replica holds a live lease
        ok = await r.admit(clock)
        await r.leased.record(REALM, ok, Outcome.SUCCESS)
    opener = replicas[0]
    moved = []
    for _ in range(3):
        failed = await opener.admit(clock)
        assert failed.verdict is Verdict.ADMIT
        moved.append(await opener.leased.record(REALM, failed, Outcome.FAILURE))
    assert moved == [None, None, BreakerState.OPEN]
    refused = await opener.admit(clock)  # the replica that saw it stops at once
    assert refused.reason is RefusalReason.CIRCUIT_OPEN
    clock.advance(LEASE)  # every other replica's lease has ended
    for r in replicas[1:]:
        assert (await r.admit(clock)).reason is RefusalReason.CIRCUIT_OPEN
    clock.advance(60)
    results = [await replicas[i % 3].admit(clock) for i in range(20)]
    admitted = [a for a in results if a.verdict is Verdict.ADMIT]
    assert len(admitted) == 1 and admitted[0].probe
    assert {a.reason for a in results if a.verdict is Verdict.REFUSE} == {
        RefusalReason.CIRCUIT_OPEN
    }
    prober = replicas[results.index(admitted[0]) % 3]
    assert await prober.leased.record(REALM, admitted[0], Outcome.SUCCESS) is BreakerState.CLOSED
    again = await replicas[1].admit(clock)
    assert again.verdict is Verdict.ADMIT and not again.probe


async def test_a_throttle_reaches_every_replica_within_one_lease(
    make_replicas: Factory, clock: ManualClock
) -> None:
    a, b = await make_replicas(AdmissionPolicy(throttle_cooldown=60), 2)
    for r in (a, b):
        for _ in range(3):
            await r.leased.record(REALM, await r.admit(clock), Outcome.SUCCESS)
    throttled = await a.admit(clock)
    await a.leased.record(REALM, throttled, Outcome.THROTTLE, retry_after=30)
    assert (await a.admit(clock)).reason is RefusalReason.THROTTLED  # at once where seen
    clock.advance(LEASE)
    refused = await b.admit(clock)
    assert refused.reason is RefusalReason.THROTTLED
    assert refused.retry_after == pytest.approx(30 - LEASE)


async def test_unspent_slots_go_back_when_the_realm_goes_idle(
    make_replicas: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(per_minute=20, per_second=10, concurrency=3)
    a, b = await make_replicas(policy, 2)
    held = [await a.admit(clock) for _ in range(3)]  # a leases for a burst of three
    for admission in held:
        await a.leased.record(REALM, admission, Outcome.SUCCESS)
    await a.leased.drain()
    leased = await a.leased.load(REALM)
    assert leased.in_flight >= 1  # a holds concurrency slots it is not using
    clock.advance(LEASE)
    await a.leased.tick()  # the lease ended: what a did not spend goes back
    load = await b.leased.load(REALM)
    assert load.in_flight == 0
    assert load.requests_last_minute == 3
    # b can use the rest of the minute's budget at once: 17 slots.
    sent = 0
    for _ in range(40):
        admission = await b.admit(clock)
        if admission.verdict is Verdict.ADMIT and admission.delay == 0:
            sent += 1
            await b.leased.record(REALM, admission, Outcome.SUCCESS)
        clock.advance(0.2)
    assert sent == 17
    assert worst_window(a.sends + b.sends, 60.0) == 20


async def test_batched_successes_keep_consecutive_failure_counting(
    make_replicas: Factory, clock: ManualClock
) -> None:
    (r,) = await make_replicas(AdmissionPolicy(failure_threshold=5))

    async def outcome(o: Outcome) -> BreakerState | None:
        return await r.leased.record(REALM, await r.admit(clock), o)

    for o in (Outcome.FAILURE, Outcome.FAILURE, Outcome.SUCCESS):
        assert await outcome(o) is None
    for _ in range(4):  # the success above ended the run: four in a row do not open
        assert await outcome(Outcome.FAILURE) is None
    assert (await r.leased.load(REALM)).consecutive_failures == 4
    assert await outcome(Outcome.FAILURE) is BreakerState.OPEN
    assert r.redis.calls["admit"] == 0  # every request above was leased


async def test_successes_are_reported_together_after_the_reply(
    make_replicas: Factory, clock: ManualClock
) -> None:
    (r,) = await make_replicas(AdmissionPolicy(failure_threshold=5))
    for _ in range(3):
        await r.leased.record(REALM, await r.admit(clock), Outcome.FAILURE)
    await r.leased.drain()
    leases = r.redis.calls["lease"]
    for _ in range(5):
        await r.leased.record(REALM, await r.admit(clock), Outcome.SUCCESS)
    assert r.redis.calls["record"] == 3  # the failures; no record call for any success
    await r.leased.drain()
    await r.leased.tick()
    # Reported with a lease request or the next tick: fewer calls than successes.
    assert r.redis.calls["lease"] - leases < 5
    assert (await r.leased.load(REALM)).consecutive_failures == 0
    assert r.redis.calls["record"] == 3


async def test_a_replica_that_vanishes_frees_its_slots_after_the_deadline(
    make_replicas: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(concurrency=2, lease_seconds=30)
    crashed, alive = await make_replicas(policy, 2)
    for _ in range(2):
        assert (await crashed.admit(clock)).verdict is Verdict.ADMIT
    await crashed.leased.drain()
    assert (await alive.admit(clock)).verdict is Verdict.WAIT
    clock.advance(30 + LEASE + 0.01)
    assert (await alive.admit(clock)).verdict is Verdict.ADMIT


async def test_leases_work_on_redis_time(redis_server: RedisServer, redis_prefix: str) -> None:
    client = make_redis(redis_server.url)
    try:
        policy = AdmissionPolicy(per_second=4)
        redis = RedisAdmission(client, policy, keys=RedisKeys(redis_prefix), lease_seconds=LEASE)
        leased = LeasedAdmission(redis, policy, clock=ManualClock(), lease_seconds=LEASE)
        rate_key = RedisKeys(redis_prefix).rate(REALM)
        for _ in range(4):
            admission = await leased.admit(REALM)
            assert admission.verdict is Verdict.ADMIT and admission.delay == 0
            await leased.record(REALM, admission, Outcome.SUCCESS)
            await leased.drain()
        assert (await leased.load(REALM)).in_flight >= 1  # held for the next request
        # Leased slots are counted from the lease's end on the server's clock.
        seconds, _ = await client.time()
        stamps = [int(s) / 1e6 for s in await client.lrange(rate_key, 0, -1)]
        assert len(stamps) >= 4 and all(0 < t - seconds <= LEASE + 1.0 for t in stamps)
        await leased.release_all()  # the unspent ones go back
        assert len(await client.lrange(rate_key, 0, -1)) == 4
        assert (await leased.load(REALM)).in_flight == 0
    finally:
        await client.aclose()


async def test_a_per_second_limit_larger_than_a_scan_chunk_is_exact(
    make_replicas: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(per_minute=10_000, per_second=150, concurrency=1000, max_wait=0)
    replicas = await make_replicas(policy, 2)
    for step in range(1500):  # 3 s of requests 2 ms apart, well above 150 a second
        r = replicas[step % 2]
        admission = await r.admit(clock)
        if admission.verdict is Verdict.ADMIT:
            await r.leased.record(REALM, admission, Outcome.SUCCESS)
        if step % 10 == 0:
            await r.leased.drain()
        clock.advance(0.002)
    sends = [t for r in replicas for t in r.sends]
    assert worst_window(sends, 1.0) <= 150
    assert len(sends) >= 200  # and the budget was used
    assert sum(r.leased_sends for r in replicas) >= 100
