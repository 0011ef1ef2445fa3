"""One behaviour suite for every AdmissionBackend: in-process and a real redis-server.

"Replicas" are separate backend instances; with Redis each has its own client, so they
share only what Redis shares. Time is a ManualClock handed to every instance.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from qbo_gateway.admission.backend_memory import MemoryAdmission
from qbo_gateway.admission.backend_redis import RedisAdmission
from qbo_gateway.admission.records import (
    Admission,
    AdmissionBackend,
    AdmissionPolicy,
    BreakerState,
    Outcome,
    RefusalReason,
    Verdict,
)
from qbo_gateway.clock import ManualClock
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from tests.redis_server import RedisServer
from tests.redis_topologies import REDIS_TARGETS, redis_target

REALM = "9130350000000001"
Factory = Callable[..., Awaitable[list[AdmissionBackend]]]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", *REDIS_TARGETS])
async def make_backends(
    request: pytest.FixtureRequest, clock: ManualClock, redis_prefix: str
) -> AsyncIterator[Factory]:
    """make_backends(policy, n=1, random=...) -> n replicas sharing one realm state."""
    clients = []

    async def make(
        policy: AdmissionPolicy, n: int = 1, random: Callable[[], float] = lambda: 0.0
    ) -> list[AdmissionBackend]:
        if request.param == "memory":
            shared = MemoryAdmission(policy, clock=clock, random=random)
            return [shared] * n
        target = redis_target(request, request.param)
        out: list[AdmissionBackend] = []
        for _ in range(n):
            client = target.client()
            clients.append(client)
            out.append(
                RedisAdmission(
                    client, policy, keys=RedisKeys(redis_prefix), clock=clock, random=random
                )
            )
        return out

    yield make
    for client in clients:
        await client.aclose()


async def fail(backend: AdmissionBackend, n: int) -> list[BreakerState | None]:
    moved = []
    for _ in range(n):
        admission = await backend.admit(REALM)
        assert admission.verdict is Verdict.ADMIT
        moved.append(await backend.record(REALM, admission, Outcome.FAILURE))
    return moved


async def open_circuit(backend: AdmissionBackend, policy: AdmissionPolicy) -> None:
    moved = await fail(backend, policy.failure_threshold)
    assert moved[-1] is BreakerState.OPEN


async def test_circuit_opens_after_exactly_threshold_failures(make_backends: Factory) -> None:
    (b,) = await make_backends(AdmissionPolicy(failure_threshold=5))
    assert await fail(b, 4) == [None] * 4
    assert (await b.load(REALM)).breaker is BreakerState.CLOSED
    assert await fail(b, 1) == [BreakerState.OPEN]
    assert (await b.load(REALM)).breaker is BreakerState.OPEN


async def test_success_resets_consecutive_failures(make_backends: Factory) -> None:
    (b,) = await make_backends(AdmissionPolicy(failure_threshold=3))
    await fail(b, 2)
    ok = await b.admit(REALM)
    assert await b.record(REALM, ok, Outcome.SUCCESS) is None
    assert await fail(b, 2) == [None, None]
    assert (await b.load(REALM)).consecutive_failures == 2


async def test_open_circuit_refuses_with_time_to_half_open(
    make_backends: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(recovery_seconds=300)
    b1, b2 = await make_backends(policy, 2)
    await open_circuit(b1, policy)
    clock.advance(100)
    refused = await b2.admit(REALM)
    assert refused.verdict is Verdict.REFUSE
    assert refused.reason is RefusalReason.CIRCUIT_OPEN
    assert refused.retry_after == pytest.approx(200)
    assert refused.lease_id is None


async def test_half_open_admits_exactly_one_probe_across_replicas(
    make_backends: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(recovery_seconds=300, concurrency=50, per_second=100)
    replicas = await make_backends(policy, 3)
    await open_circuit(replicas[0], policy)
    clock.advance(300)
    results = await asyncio.gather(*(replicas[i % 3].admit(REALM) for i in range(20)))
    admitted = [a for a in results if a.verdict is Verdict.ADMIT]
    assert len(admitted) == 1
    assert admitted[0].probe and admitted[0].transition is BreakerState.HALF_OPEN
    refused = [a for a in results if a.verdict is Verdict.REFUSE]
    assert len(refused) == 19
    assert {a.reason for a in refused} == {RefusalReason.CIRCUIT_OPEN}
    assert (await replicas[1].load(REALM)).breaker is BreakerState.HALF_OPEN


async def test_probe_success_closes(make_backends: Factory, clock: ManualClock) -> None:
    policy = AdmissionPolicy(recovery_seconds=60)
    b1, b2 = await make_backends(policy, 2)
    await open_circuit(b1, policy)
    clock.advance(60)
    probe = await b2.admit(REALM)
    assert probe.probe
    assert await b1.record(REALM, probe, Outcome.SUCCESS) is BreakerState.CLOSED
    after = await b1.admit(REALM)
    assert after.verdict is Verdict.ADMIT and not after.probe
    assert (await b2.load(REALM)).consecutive_failures == 0


async def test_probe_failure_reopens_for_longer_capped(
    make_backends: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(recovery_seconds=100, max_recovery_seconds=350)
    (b,) = await make_backends(policy, 1, random=lambda: 0.0)
    await open_circuit(b, policy)
    open_times = []
    for _ in range(3):
        clock.advance(1000)
        probe = await b.admit(REALM)
        assert probe.probe
        assert await b.record(REALM, probe, Outcome.FAILURE) is BreakerState.OPEN
        refused = await b.admit(REALM)
        assert refused.reason is RefusalReason.CIRCUIT_OPEN
        assert refused.retry_after is not None
        open_times.append(refused.retry_after)
    assert open_times == pytest.approx([200, 350, 350])


async def test_reopen_jitter_shortens_but_never_below_recovery(
    make_backends: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(recovery_seconds=100, max_recovery_seconds=1000)
    (b,) = await make_backends(policy, 1, random=lambda: 1.0)
    await open_circuit(b, policy)
    clock.advance(100)
    probe = await b.admit(REALM)
    await b.record(REALM, probe, Outcome.FAILURE)
    refused = await b.admit(REALM)
    assert refused.retry_after == pytest.approx(160)  # 200 less 20% jitter


async def test_lapsed_probe_lease_lets_another_probe(
    make_backends: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(recovery_seconds=60, lease_seconds=30)
    b1, b2 = await make_backends(policy, 2)
    await open_circuit(b1, policy)
    clock.advance(60)
    first = await b1.admit(REALM)
    assert first.probe
    clock.advance(10)
    blocked = await b2.admit(REALM)
    assert blocked.reason is RefusalReason.CIRCUIT_OPEN
    assert blocked.retry_after == pytest.approx(20)
    clock.advance(21)  # the first probe's replica crashed: its lease lapses
    second = await b2.admit(REALM)
    assert second.verdict is Verdict.ADMIT and second.probe
    assert second.transition is None  # already half-open: not a new transition
    # The crashed probe's late report belongs to an earlier generation: no effect.
    assert await b1.record(REALM, first, Outcome.SUCCESS) is None
    assert (await b1.load(REALM)).breaker is BreakerState.HALF_OPEN
    assert await b2.record(REALM, second, Outcome.SUCCESS) is BreakerState.CLOSED


async def test_abandoned_probe_frees_the_probe_at_once(
    make_backends: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(recovery_seconds=60)
    (b,) = await make_backends(policy)
    await open_circuit(b, policy)
    clock.advance(60)
    probe = await b.admit(REALM)
    assert await b.record(REALM, probe, Outcome.ABANDONED) is None
    again = await b.admit(REALM)
    assert again.verdict is Verdict.ADMIT and again.probe


async def test_outcome_from_an_earlier_state_never_flips_the_current_one(
    make_backends: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(failure_threshold=2, recovery_seconds=60)
    b1, b2 = await make_backends(policy, 2)
    slow = await b1.admit(REALM)  # started while closed
    await fail(b2, 2)
    assert (await b1.load(REALM)).breaker is BreakerState.OPEN
    assert await b1.record(REALM, slow, Outcome.SUCCESS) is None
    assert (await b1.load(REALM)).breaker is BreakerState.OPEN
    clock.advance(60)
    probe = await b2.admit(REALM)
    assert await b1.record(REALM, slow, Outcome.FAILURE) is None
    assert (await b1.load(REALM)).breaker is BreakerState.HALF_OPEN
    assert await b2.record(REALM, probe, Outcome.SUCCESS) is BreakerState.CLOSED


async def test_reset_closes_the_circuit_for_every_replica(make_backends: Factory) -> None:
    policy = AdmissionPolicy(failure_threshold=2, recovery_seconds=300)
    b1, b2 = await make_backends(policy, 2)
    before = await b1.admit(REALM)  # admitted before the circuit opened
    await open_circuit(b1, policy)
    failing = await b1.admit(REALM)
    assert failing.verdict is Verdict.REFUSE
    await b1.reset_breaker(REALM)
    load = await b2.load(REALM)
    assert load.breaker is BreakerState.CLOSED and load.consecutive_failures == 0
    admitted = await b2.admit(REALM)
    assert admitted.verdict is Verdict.ADMIT and admitted.probe is False
    # Outcomes of requests from before the reset have no say over the new state.
    assert await b1.record(REALM, before, Outcome.FAILURE) is None
    assert await fail(b2, 1) == [None]  # one failure of the threshold's two: still closed
    assert (await b1.load(REALM)).breaker is BreakerState.CLOSED


async def test_three_replicas_never_exceed_the_minute_limit(
    make_backends: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(per_minute=100, per_second=1000, concurrency=1000, max_wait=5)
    replicas = await make_backends(policy, 3)
    sent: list[float] = []
    refused: list[Admission] = []
    for step in range(100):  # 300 admits over 150 s
        results = await asyncio.gather(*(r.admit(REALM) for r in replicas))
        for replica, admission in zip(replicas, results, strict=True):
            if admission.verdict is Verdict.ADMIT:
                sent.append(clock.now() + admission.delay)
                await replica.record(REALM, admission, Outcome.SUCCESS)
            else:
                assert admission.reason is RefusalReason.RATE
                assert admission.retry_after is not None and admission.retry_after > 5
                refused.append(admission)
        clock.advance(1.5 if step % 2 else 1.0)
    sent.sort()
    worst = max(sum(1 for t in sent if start <= t < start + 60) for start in sent)
    assert worst == 100
    assert len(sent) + len(refused) == 300
    assert 200 <= len(sent) <= 300


async def test_rate_refusal_retry_after_is_honest(
    make_backends: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(per_minute=3, per_second=10, max_wait=5)
    (b,) = await make_backends(policy)
    for _ in range(3):
        assert (await b.admit(REALM)).verdict is Verdict.ADMIT
    clock.advance(10)
    refused = await b.admit(REALM)
    assert refused.verdict is Verdict.REFUSE and refused.reason is RefusalReason.RATE
    assert refused.retry_after == pytest.approx(50)
    clock.advance(refused.retry_after - 5.5)
    assert (await b.admit(REALM)).verdict is Verdict.REFUSE
    clock.advance(5.5)
    admitted = await b.admit(REALM)
    assert admitted.verdict is Verdict.ADMIT and admitted.delay == pytest.approx(0)


async def test_per_second_limit_spaces_requests_with_a_delay(
    make_backends: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(per_minute=500, per_second=10, concurrency=100, max_wait=2.5)
    b1, b2 = await make_backends(policy, 2)
    delays = [(await (b1 if i % 2 else b2).admit(REALM)) for i in range(35)]
    admitted = [a.delay for a in delays if a.verdict is Verdict.ADMIT]
    assert admitted == pytest.approx([0.0] * 10 + [1.0] * 10 + [2.0] * 10)
    assert all(a.reason is RefusalReason.RATE for a in delays[30:])
    assert delays[30].retry_after == pytest.approx(3.0)


async def test_batch_limit_is_separate(make_backends: Factory, clock: ManualClock) -> None:
    policy = AdmissionPolicy(batch_per_minute=2, max_wait=1)
    (b,) = await make_backends(policy)
    assert (await b.admit(REALM, batch=True)).verdict is Verdict.ADMIT
    assert (await b.admit(REALM, batch=True)).verdict is Verdict.ADMIT
    third = await b.admit(REALM, batch=True)
    assert third.reason is RefusalReason.BATCH
    assert third.retry_after == pytest.approx(60)
    assert (await b.admit(REALM)).verdict is Verdict.ADMIT
    assert (await b.load(REALM)).requests_last_minute == 3


async def test_concurrency_limit_never_exceeded(make_backends: Factory, clock: ManualClock) -> None:
    policy = AdmissionPolicy(concurrency=10, per_second=1000, per_minute=10_000)
    replicas = await make_backends(policy, 3)
    results = await asyncio.gather(*(replicas[i % 3].admit(REALM) for i in range(25)))
    admitted = [a for a in results if a.verdict is Verdict.ADMIT]
    waiting = [a for a in results if a.verdict is Verdict.WAIT]
    assert len(admitted) == 10 and len(waiting) == 15
    assert all(0 < a.delay <= 0.05 for a in waiting)
    assert len({a.lease_id for a in admitted}) == 10
    assert (await replicas[0].load(REALM)).in_flight == 10
    await replicas[1].record(REALM, admitted[0], Outcome.SUCCESS)
    again = await asyncio.gather(*(r.admit(REALM) for r in replicas))
    assert [a.verdict for a in again].count(Verdict.ADMIT) == 1


async def test_crashed_replicas_leases_come_back_after_the_deadline(
    make_backends: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(concurrency=2, lease_seconds=30)
    crashed, alive = await make_backends(policy, 2)
    for _ in range(2):
        assert (await crashed.admit(REALM)).verdict is Verdict.ADMIT
    assert (await alive.admit(REALM)).verdict is Verdict.WAIT
    clock.advance(29)
    assert (await alive.admit(REALM)).verdict is Verdict.WAIT
    clock.advance(1.01)
    assert (await alive.admit(REALM)).verdict is Verdict.ADMIT


async def test_throttle_pauses_the_realm_for_every_replica(
    make_backends: Factory, clock: ManualClock
) -> None:
    policy = AdmissionPolicy(throttle_cooldown=60, failure_threshold=1)
    b1, b2, b3 = await make_backends(policy, 3)
    first = await b1.admit(REALM)
    assert await b1.record(REALM, first, Outcome.THROTTLE, retry_after=30) is None
    for b in (b2, b3):
        refused = await b.admit(REALM)
        assert refused.reason is RefusalReason.THROTTLED
        assert refused.retry_after == pytest.approx(30)
    load = await b2.load(REALM)
    assert load.breaker is BreakerState.CLOSED  # a throttle is not a breaker failure
    assert load.cooldown_until == pytest.approx(clock.now() + 30)
    clock.advance(30)
    second = await b3.admit(REALM)
    assert second.verdict is Verdict.ADMIT
    await b3.record(REALM, second, Outcome.THROTTLE)  # no Retry-After: the default
    refused = await b1.admit(REALM)
    assert refused.retry_after == pytest.approx(60)


async def test_load_reports_the_realm(make_backends: Factory, clock: ManualClock) -> None:
    policy = AdmissionPolicy(per_second=2)
    (b,) = await make_backends(policy)
    await b.admit(REALM)
    done = await b.admit(REALM)
    await b.admit(REALM)  # reserved one second ahead
    await b.record(REALM, done, Outcome.FAILURE)
    load = await b.load(REALM)
    assert (load.requests_last_second, load.requests_last_minute) == (2, 2)
    assert load.in_flight == 2
    assert load.consecutive_failures == 1
    assert load.cooldown_until is None and load.open_until is None
    clock.advance(1)
    assert (await b.load(REALM)).requests_last_minute == 3


async def test_redis_time_is_the_clock_when_none_is_injected(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    client = make_redis(redis_server.url)
    try:
        policy = AdmissionPolicy(failure_threshold=2, recovery_seconds=120, per_second=1)
        b = RedisAdmission(client, policy, keys=RedisKeys(redis_prefix))
        first = await b.admit(REALM)
        second = await b.admit(REALM)
        assert 0.9 < second.delay <= 1.0  # spaced by the server's own clock
        await b.record(REALM, first, Outcome.FAILURE)
        assert await b.record(REALM, second, Outcome.FAILURE) is BreakerState.OPEN
        refused = await b.admit(REALM)
        assert refused.reason is RefusalReason.CIRCUIT_OPEN
        assert refused.retry_after is not None and 119 < refused.retry_after <= 120
        seconds, _ = await client.time()
        load = await b.load(REALM)
        assert load.open_until is not None and abs(load.open_until - seconds - 120) < 2
    finally:
        await client.aclose()


async def test_redis_admit_and_record_are_one_round_trip_each(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    client = make_redis(redis_server.url)
    try:
        await client.script_flush()
        b = RedisAdmission(client, AdmissionPolicy(), keys=RedisKeys(redis_prefix))
        await b.load_scripts()
        before = await client.info("commandstats")
        for _ in range(20):
            admission = await b.admit(REALM)
            await b.record(REALM, admission, Outcome.SUCCESS)
        after = await client.info("commandstats")
        top_level = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script|load")
        calls = {
            k: after.get(k, {"calls": 0})["calls"] - before.get(k, {"calls": 0})["calls"]
            for k in top_level
        }
        assert calls == {"cmdstat_evalsha": 40, "cmdstat_eval": 0, "cmdstat_script|load": 0}
    finally:
        await client.aclose()


async def test_memory_forgets_idle_realms_but_never_one_whose_state_decides(
    clock: ManualClock,
) -> None:
    policy = AdmissionPolicy(per_minute=100, per_second=100, failure_threshold=3, lease_seconds=600)
    backend = MemoryAdmission(policy, clock=clock)
    opened, failing, cooling, busy = "1", "2", "3", "4"
    for _ in range(3):
        await backend.record(opened, await backend.admit(opened), Outcome.FAILURE)
    await backend.record(failing, await backend.admit(failing), Outcome.FAILURE)
    await backend.record(cooling, await backend.admit(cooling), Outcome.THROTTLE, retry_after=600)
    await backend.admit(busy)  # still in flight: its lease is held
    for i in range(3000):  # realms served once and done
        realm = str(10_000 + i)
        await backend.record(realm, await backend.admit(realm), Outcome.SUCCESS)
    # Sweeps ran on the way, but every realm's minute window still counted.
    assert backend.realms_held == 3004
    clock.advance(61)
    for _ in range(3100):  # enough admits for a sweep, whatever the verdicts
        await backend.admit("5")
    assert backend.realms_held == 5
    assert (await backend.load(opened)).breaker is BreakerState.OPEN
    assert (await backend.load(failing)).consecutive_failures == 1
    assert (await backend.load(cooling)).cooldown_until is not None
    assert (await backend.load(busy)).in_flight == 1
