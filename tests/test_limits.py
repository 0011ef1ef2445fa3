"""The Admitter: waits, refusals, background recording, transitions counted once."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from qbo_gateway.admission.backend_memory import MemoryAdmission
from qbo_gateway.admission.gate import Admitter
from qbo_gateway.admission.records import Admission, AdmissionPolicy, BreakerState, Outcome
from qbo_gateway.clock import ManualClock
from qbo_gateway.faults import CircuitOpen, FaultClass, RateLimited
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import TokenEvent
from qbo_gateway.tokens.records import TokenRecord

REALM = "4620816365000000001"


class RecordingObserver:
    def __init__(self) -> None:
        self.breaker: list[tuple[str, BreakerState]] = []
        self.throttles: list[tuple[str, float]] = []

    def request_finished(
        self,
        realm_id: str,
        *,
        outcome: str,
        status: int,
        latency: float,
        fault: FaultClass | None,
        probe: bool = False,
    ) -> None:
        return None

    def stale_served(self, realm_id: str, *, reason: str, age: float) -> None:
        return None

    def breaker_changed(self, realm_id: str, state: BreakerState) -> None:
        self.breaker.append((realm_id, state))

    def throttled(self, realm_id: str, *, until: float) -> None:
        self.throttles.append((realm_id, until))

    def token_event(
        self, realm_id: str, event: TokenEvent, record: TokenRecord | None = None
    ) -> None:
        return None


class Rig:
    def __init__(self, **policy: float) -> None:
        self.clock = ManualClock()
        self.policy = AdmissionPolicy(**policy)  # type: ignore[arg-type]
        self.backend = MemoryAdmission(self.policy, clock=self.clock)
        self.metrics = Metrics(CollectorRegistry())
        self.observer = RecordingObserver()
        self.admitter = Admitter(
            self.backend,
            policy=self.policy,
            clock=self.clock,
            metrics=self.metrics,
            observer=self.observer,
        )

    def deadline(self, seconds: float = 30) -> float:
        return self.clock.monotonic() + seconds

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def acquire(self, **kwargs: object) -> Admission:
        return await self.admitter.acquire(REALM, deadline=self.deadline(), **kwargs)  # type: ignore[arg-type]


async def test_admit_sleeps_until_the_reserved_slot() -> None:
    rig = Rig(per_second=2, max_wait=5)
    start = rig.clock.now()
    for _ in range(5):
        await rig.acquire()
    assert rig.clock.now() - start == pytest.approx(2.0)
    # the 3rd and 5th waited; the 4th came due while the 3rd slept
    assert rig.sample("qbo_gateway_rate_limited_total", reason="delayed") == 2


async def test_waits_for_a_concurrency_slot_then_goes() -> None:
    rig = Rig(concurrency=1, max_wait=5)
    first = await rig.acquire()
    second = asyncio.create_task(rig.acquire())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not second.done()
    rig.admitter.release(REALM, first, Outcome.SUCCESS)
    admitted = await asyncio.wait_for(second, 5)
    assert admitted.lease_id != first.lease_id
    assert rig.sample("qbo_gateway_rate_limited_total", reason="concurrency") == 0


async def test_concurrency_wait_is_bounded_by_admission_wait() -> None:
    rig = Rig(concurrency=1, max_wait=2)
    await rig.acquire()
    start = rig.clock.monotonic()
    with pytest.raises(RateLimited) as refused:
        await rig.acquire()
    assert refused.value.reason == "concurrency"
    assert refused.value.retry_after == 1.0
    assert 1.9 <= rig.clock.monotonic() - start <= 2.0
    assert rig.sample("qbo_gateway_rate_limited_total", reason="concurrency") == 1


async def test_rate_refusal_is_immediate_with_honest_retry_after() -> None:
    rig = Rig(per_minute=2, max_wait=5)
    await rig.acquire()
    await rig.acquire()
    start = rig.clock.now()
    with pytest.raises(RateLimited) as refused:
        await rig.acquire()
    assert rig.clock.now() == start
    assert refused.value.reason == "rate" and refused.value.status == 429
    assert refused.value.retry_after == pytest.approx(60)
    with pytest.raises(RateLimited) as batch:
        await rig.acquire(batch=True)
    assert batch.value.reason == "rate"
    assert rig.sample("qbo_gateway_rate_limited_total", reason="rate") == 2


async def test_breaker_transitions_counted_logged_and_observed_once() -> None:
    rig = Rig(failure_threshold=5, recovery_seconds=60)
    with capture_logs() as logs:
        for _ in range(5):
            rig.admitter.release(REALM, await rig.acquire(), Outcome.FAILURE)
        await rig.admitter.drain()
        with pytest.raises(CircuitOpen) as refused:
            await rig.acquire()
        assert refused.value.retry_after == pytest.approx(60)
        assert refused.value.status == 503
        rig.clock.advance(60)
        probe = await rig.acquire()
        assert probe.probe
        rig.admitter.release(REALM, probe, Outcome.SUCCESS)
        await rig.admitter.drain()
    transitions = [e["to"] for e in logs if e["event"] == "circuit_transition"]
    assert transitions == ["open", "half_open", "closed"]
    assert rig.observer.breaker == [
        (REALM, BreakerState.OPEN),
        (REALM, BreakerState.HALF_OPEN),
        (REALM, BreakerState.CLOSED),
    ]
    for to in ("open", "half_open", "closed"):
        assert rig.sample("qbo_gateway_circuit_transitions_total", to=to) == 1
    assert rig.sample("qbo_gateway_rate_limited_total", reason="circuit_open") == 1


async def test_throttle_pauses_and_is_observed() -> None:
    rig = Rig(throttle_cooldown=60)
    admission = await rig.acquire()
    rig.admitter.release(REALM, admission, Outcome.THROTTLE, retry_after=12)
    await rig.admitter.drain()
    assert rig.observer.throttles == [(REALM, pytest.approx(rig.clock.now() + 12))]
    with pytest.raises(RateLimited) as refused:
        await rig.acquire()
    assert refused.value.reason == "throttled"
    assert refused.value.retry_after == pytest.approx(12)
    assert rig.observer.breaker == []


async def test_slot_past_the_deadline_is_refused_and_handed_back() -> None:
    rig = Rig(per_second=1, max_wait=5)
    await rig.acquire()
    with pytest.raises(RateLimited) as refused:
        await rig.admitter.acquire(REALM, deadline=rig.deadline(0.5))
    assert refused.value.retry_after == pytest.approx(1.0)
    await rig.admitter.drain()
    assert (await rig.backend.load(REALM)).in_flight == 1


class SlowRecord(MemoryAdmission):
    """Holds every record until released, to show the response never waits for it."""

    gate: asyncio.Event

    async def record(self, *args: object, **kwargs: object) -> BreakerState | None:
        await self.gate.wait()
        return await super().record(*args, **kwargs)  # type: ignore[arg-type]


async def test_release_does_not_wait_for_the_backend_and_drain_does() -> None:
    clock = ManualClock()
    policy = AdmissionPolicy()
    backend = SlowRecord(policy, clock=clock)
    backend.gate = asyncio.Event()
    admitter = Admitter(backend, policy=policy, clock=clock, metrics=Metrics(CollectorRegistry()))
    admission = await admitter.acquire(REALM, deadline=clock.monotonic() + 30)
    admitter.release(REALM, admission, Outcome.SUCCESS)  # returns at once
    assert (await backend.load(REALM)).in_flight == 1
    drained = asyncio.create_task(admitter.drain())
    await asyncio.sleep(0)
    assert not drained.done()
    backend.gate.set()
    await asyncio.wait_for(drained, 5)
    assert (await backend.load(REALM)).in_flight == 0
