"""Redis down or slow: admission keeps going on each replica's share, then shares again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from structlog.testing import capture_logs

from qbo_gateway.admission.backend_memory import MemoryAdmission
from qbo_gateway.admission.backend_redis import RedisAdmission
from qbo_gateway.admission.fallback import FallbackAdmission
from qbo_gateway.admission.leases import LeasedAdmission
from qbo_gateway.admission.records import (
    Admission,
    AdmissionPolicy,
    Outcome,
    RefusalReason,
    Verdict,
)
from qbo_gateway.clock import ManualClock
from qbo_gateway.metrics import Metrics
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from tests.redis_server import RedisServer

REALM = "9341453000000002"
POLICY = AdmissionPolicy(per_minute=300, per_second=100, concurrency=30, max_wait=5)


@dataclass
class Replica:
    admission: FallbackAdmission
    availability: BackendAvailability
    metrics: Metrics
    client: Redis

    def backend_up(self) -> float | None:
        return self.metrics.registry.get_sample_value("qbo_gateway_state_backend_up")


def build(url: str, prefix: str, clock: ManualClock, **redis_kw: float) -> Replica:
    client = make_redis(url, **redis_kw)
    metrics = Metrics(CollectorRegistry())
    availability = BackendAvailability(ping=client.ping, metrics=metrics, probe_interval=30)
    primary = RedisAdmission(client, POLICY, keys=RedisKeys(prefix), clock=clock)
    local = MemoryAdmission(POLICY.shared_out(3), clock=clock)
    return Replica(
        FallbackAdmission(primary, local, availability=availability), availability, metrics, client
    )


@pytest.fixture
async def replicas(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[list[Replica]]:
    clock = ManualClock()
    out = [build(redis_server.url, redis_prefix, clock) for _ in range(3)]
    yield out
    for replica in out:
        await replica.availability.close()
        await replica.client.aclose()
    if redis_server.proc is None:
        redis_server.start()


async def admit_and_record(replica: Replica) -> Admission:
    admission = await replica.admission.admit(REALM)
    assert admission.verdict is Verdict.ADMIT
    await replica.admission.record(REALM, admission, Outcome.SUCCESS)
    return admission


def is_local(admission: Admission) -> bool:
    return bool(admission.lease_id and admission.lease_id.startswith("local-"))


async def test_redis_stopped_under_load_then_back(
    replicas: list[Replica], redis_server: RedisServer
) -> None:
    shared = await asyncio.gather(*(admit_and_record(r) for r in replicas for _ in range(5)))
    assert not any(is_local(a) for a in shared)

    with capture_logs() as logs:
        load = [asyncio.create_task(admit_and_record(r)) for r in replicas for _ in range(20)]
        await asyncio.sleep(0)
        redis_server.stop()
        results = await asyncio.gather(*load)  # no admit fails because Redis went away
        assert len(results) == 60
        assert any(is_local(a) for a in results)
        later = await asyncio.gather(*(admit_and_record(r) for r in replicas))
        assert all(is_local(a) for a in later)
    downs = [e for e in logs if e["event"] == "state_backend_down"]
    assert len(downs) == 3  # once per replica, not once per request
    assert [r.backend_up() for r in replicas] == [0.0, 0.0, 0.0]

    # While down, each replica holds a third of the concurrency limit.
    held = [await replicas[0].admission.admit(REALM) for _ in range(10)]
    assert all(a.verdict is Verdict.ADMIT for a in held)
    assert (await replicas[0].admission.admit(REALM)).verdict is Verdict.WAIT
    assert (await replicas[1].admission.admit(REALM)).verdict is Verdict.ADMIT

    redis_server.start()
    with capture_logs() as logs:
        assert all([await r.availability.check() for r in replicas])
    assert [e["event"] for e in logs] == ["state_backend_up"] * 3
    assert [r.backend_up() for r in replicas] == [1.0, 1.0, 1.0]

    # Local admissions are recorded where their leases live, after Redis is back.
    for admission in held:
        await replicas[0].admission.record(REALM, admission, Outcome.SUCCESS)
    assert (await replicas[0].admission._fallback.load(REALM)).in_flight == 0

    # Shared state again (the restarted Redis lost its scripts: NOSCRIPT reloads them).
    first = await replicas[0].admission.admit(REALM)
    assert not is_local(first)
    await replicas[0].admission.record(REALM, first, Outcome.THROTTLE, retry_after=20)
    for other in replicas[1:]:
        refused = await other.admission.admit(REALM)
        assert refused.reason is RefusalReason.THROTTLED
        assert refused.retry_after == pytest.approx(20)


async def test_slow_redis_falls_back_without_waiting_every_request(redis_prefix: str) -> None:
    received: list[bytes] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.append(chunk)
        writer.close()

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    replica = build(
        f"redis://127.0.0.1:{port}/0",
        redis_prefix,
        ManualClock(),
        socket_timeout=0.1,
        connect_timeout=0.1,
    )
    try:
        first = await replica.admission.admit(REALM)
        assert first.verdict is Verdict.ADMIT and is_local(first)
        assert replica.backend_up() == 0.0
        seen = len(b"".join(received))
        assert seen > 0
        for _ in range(5):
            assert is_local(await admit_and_record(replica))
        assert len(b"".join(received)) == seen  # Redis is not asked again while down
        assert await replica.admission.record(REALM, first, Outcome.FAILURE) is None
    finally:
        await replica.availability.close()
        await replica.client.aclose()
        server.close()
        await server.wait_closed()


async def test_leases_give_way_to_local_admission_while_redis_is_down(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    clock = ManualClock()
    replica = build(redis_server.url, redis_prefix, clock)
    leased = LeasedAdmission(replica.admission, POLICY, clock=clock, lease_seconds=0.5, holder="r1")
    try:
        first = await leased.admit(REALM)
        assert first.lease_id is not None and first.lease_id.startswith("r1:")  # leased
        await leased.record(REALM, first, Outcome.SUCCESS)
        redis_server.stop()
        # The live slice is this replica's to spend: no Redis needed for it.
        within = await leased.admit(REALM)
        assert within.lease_id is not None and within.lease_id.startswith("r1:")
        await leased.record(REALM, within, Outcome.SUCCESS)
        clock.advance(0.5)  # the lease is over: no new one while Redis is down
        results = [await leased.admit(REALM) for _ in range(5)]
        assert all(a.verdict is Verdict.ADMIT and is_local(a) for a in results)
        assert replica.backend_up() == 0.0
        for admission in results:
            await leased.record(REALM, admission, Outcome.SUCCESS)
        assert (await replica.admission._fallback.load(REALM)).in_flight == 0
        await leased.tick()  # what is owed to Redis waits for it
    finally:
        redis_server.start()
    assert await replica.availability.check()
    clock.advance(0.5)
    back = await leased.admit(REALM)
    assert back.lease_id is not None and back.lease_id.startswith("r1:")
    await leased.record(REALM, back, Outcome.SUCCESS)
    await leased.release_all()
    assert (await leased.load(REALM)).in_flight == 0
    await replica.availability.close()
    await replica.client.aclose()
