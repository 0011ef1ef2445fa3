"""Admission, breaker, throttle and degraded reads through whole gateways (real sockets).

Each scenario runs in embedded mode and on a real redis-server; the multi-replica ones run
three gateways on one Redis, counting at the simulator what QBO would have seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.fernet import Fernet

from qbo_gateway.app import Gateway
from qbo_gateway.clock import Clock, ManualClock, SystemClock
from qbo_gateway.simulator import FaultRule, Simulator, TokenPair
from tests.harness import REALM, start_gateway, start_sim
from tests.redis_server import RedisServer

COMPANY = f"companyinfo/{REALM}"


class Cluster:
    """One simulator, N gateways (embedded: N=1; redis: N share one Redis)."""

    def __init__(self, sim: Simulator, pair: TokenPair, clock: Clock) -> None:
        self.sim = sim
        self.pair = pair
        self.clock = clock
        self.gateways: list[Gateway] = []
        self.urls: list[str] = []
        self.session = aiohttp.ClientSession()

    def api(self, rest: str, i: int = 0) -> str:
        return f"{self.urls[i % len(self.urls)]}/v3/company/{REALM}/{rest}"

    async def get(self, rest: str, i: int = 0, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        async with self.session.get(self.api(rest, i), **kw) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    async def close(self) -> None:
        await self.session.close()
        for gw in self.gateways:
            await gw.close()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def make_cluster(
    backend: str,
    aiohttp_server: Any,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_prefix: str,
    *,
    replicas: int = 1,
    clock: Clock | None = None,
    **overrides: Any,
) -> Cluster:
    clock = clock or ManualClock()
    sim, sim_server = await start_sim(aiohttp_server, clock=clock.now)
    pair = sim.add_realm(REALM)
    cluster = Cluster(sim, pair, clock)
    extra: dict[str, Any] = {}
    if backend == "redis":
        extra = {"redis_url": redis_server.url, "token_keys": KEYS, "replica_count": replicas}
    else:
        replicas = 1
    for i in range(replicas):
        gw, proxy, _ops, _reg = await start_gateway(
            aiohttp_server,
            sim,
            sim_server,
            tmp_path / f"state{i}",
            clock=clock,
            seed=pair if i == 0 else None,
            redis_prefix=redis_prefix,
            **extra,
            **overrides,
        )
        cluster.gateways.append(gw)
        cluster.urls.append(str(proxy.make_url("")).rstrip("/"))
    return cluster


KEYS = Fernet.generate_key().decode()


@pytest.fixture
async def factory(
    backend: str, aiohttp_server: Any, tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[Any]:
    made: list[Cluster] = []

    async def build(**kw: Any) -> Cluster:
        c = await make_cluster(backend, aiohttp_server, tmp_path, redis_server, redis_prefix, **kw)
        made.append(c)
        return c

    yield build
    for c in made:
        await c.close()


@pytest.fixture
async def redis_factory(
    aiohttp_server: Any, tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[Any]:
    """Clusters of several replicas share limits through Redis only."""
    made: list[Cluster] = []

    async def build(**kw: Any) -> Cluster:
        c = await make_cluster("redis", aiohttp_server, tmp_path, redis_server, redis_prefix, **kw)
        made.append(c)
        return c

    yield build
    for c in made:
        await c.close()


async def settle(cluster: Cluster) -> None:
    for gw in cluster.gateways:
        await gw.admitter.drain()


async def post_customer(c: Cluster, i: int = 0) -> int:
    async with c.session.post(c.api("customer", i), json={"DisplayName": "x"}) as resp:
        await resp.read()
        return resp.status


async def test_circuit_opens_after_exactly_five_failures(factory: Any) -> None:
    c: Cluster = await factory(breaker_failure_threshold=5, breaker_recovery_seconds=300)
    c.sim.inject(FaultRule(kind="server_error", path="customer"))
    for _ in range(5):
        assert await post_customer(c) == 500  # writes are never retried after a 500
        await settle(c)
    seen = len(c.sim.api_requests)
    assert seen == 5
    status, headers, _body = await c.get(COMPANY)
    assert status == 503
    assert headers["X-QBO-Gateway-Error"] == "GW-CIRCUIT-OPEN"
    assert 250 <= int(headers["Retry-After"]) <= 300
    assert len(c.sim.api_requests) == seen  # nothing reached QBO while open


async def test_caller_errors_never_trip_the_breaker(factory: Any) -> None:
    c: Cluster = await factory(breaker_failure_threshold=3)
    for _ in range(8):
        status, _h, _b = await c.get("invoice/424242")  # 400 / 610 Object Not Found
        assert status == 400
    await settle(c)
    status, _h, _b = await c.get(COMPANY)
    assert status == 200


async def test_half_open_lets_exactly_one_probe_through(factory: Any) -> None:
    c: Cluster = await factory(breaker_failure_threshold=2, breaker_recovery_seconds=60)
    c.sim.inject(FaultRule(kind="server_error", path="customer"))
    for _ in range(2):
        await post_customer(c)
        await settle(c)
    c.sim.clear_faults()
    assert isinstance(c.clock, ManualClock)
    c.clock.advance(61)
    before = len(c.sim.api_requests)
    # The probe is held at QBO until the others have had their answer: on a loaded machine
    # they must not arrive after it closed the circuit.
    c.sim.latency = 1.0
    probe = asyncio.create_task(c.get(COMPANY))
    for _ in range(500):
        if c.sim.in_flight:
            break
        await asyncio.sleep(0.01)
    assert c.sim.in_flight == 1
    results = [*await asyncio.gather(*(c.get(COMPANY) for _ in range(19))), await probe]
    c.sim.latency = 0.0
    statuses = sorted(r[0] for r in results)
    assert len(c.sim.api_requests) - before == 1
    assert statuses.count(200) == 1 and statuses.count(503) == 19
    await settle(c)
    status, _h, _b = await c.get(COMPANY)  # the probe closed the circuit
    assert status == 200


async def test_stale_read_served_while_circuit_open(factory: Any) -> None:
    c: Cluster = await factory(
        breaker_failure_threshold=2,
        breaker_recovery_seconds=86400,
        breaker_max_recovery_seconds=86400,
        cache_stale_seconds=3600,
    )
    status, _h, fresh_body = await c.get(COMPANY)
    assert status == 200
    await settle(c)  # outcomes are recorded after the response; let this one land first
    c.sim.inject(FaultRule(kind="server_error", path="customer"))
    for _ in range(2):
        await post_customer(c)
        await settle(c)
    assert isinstance(c.clock, ManualClock)
    c.clock.advance(120)
    status, headers, body = await c.get(COMPANY)
    assert status == 200
    assert body == fresh_body
    assert headers["X-QBO-Gateway-Degraded"] == "circuit-open"
    assert int(headers["Age"]) >= 120
    assert headers["Cache-Status"].startswith("qbo-gateway")
    # A caller that asks for no stale data gets the error instead.
    status, headers, _b = await c.get(COMPANY, headers={"Cache-Control": "no-cache"})
    assert status == 503
    # Past the stale window the cached read is no longer served.
    c.clock.advance(3600)
    status, _h, _b = await c.get(COMPANY)
    assert status == 503


async def test_stale_read_when_qbo_answers_5xx(factory: Any) -> None:
    c: Cluster = await factory(breaker_failure_threshold=50)
    status, _h, _b = await c.get(COMPANY)
    assert status == 200
    c.sim.inject(FaultRule(kind="server_error_html", status=503, path="companyinfo"))
    status, headers, body = await c.get(COMPANY)
    assert status == 200
    assert headers["X-QBO-Gateway-Degraded"] == "upstream-error"
    assert b"CompanyInfo" in body
    # Writes are never answered from the cache.
    c.sim.inject(FaultRule(kind="server_error", path="customer"))
    assert await post_customer(c) == 500


async def test_throttle_pauses_the_realm_for_every_replica(factory: Any, backend: str) -> None:
    c: Cluster = await factory(replicas=2, throttle_cooldown_seconds=60, cache_stale_seconds=0)
    c.sim.inject(FaultRule(kind="throttle", times=1, path="companyinfo"))
    status, _h, _b = await c.get(COMPANY, 0)
    assert status == 429  # QBO's own answer comes back
    await settle(c)
    seen = len(c.sim.api_requests)
    for i in range(len(c.urls)):
        status, headers, _body = await c.get(COMPANY, i)
        assert status == 429
        assert headers["X-QBO-Gateway-Error"] == "GW-RATE-LIMITED"
        assert 50 <= int(headers["Retry-After"]) <= 60
    assert len(c.sim.api_requests) == seen
    assert isinstance(c.clock, ManualClock)
    c.clock.advance(61)
    status, _h, _b = await c.get(COMPANY, len(c.urls) - 1)
    assert status == 200


# Per request, a burst gets the whole budget; with leases, a slice another replica leased in
# the same instant and had no more demand for is only handed back after the refusals.
@pytest.mark.parametrize(("lease", "fewest_ok"), [(0.0, 100), (0.5, 90)])
async def test_rate_limit_holds_across_three_replicas(
    redis_factory: Any, lease: float, fewest_ok: int
) -> None:
    c: Cluster = await redis_factory(
        replicas=3,
        rate_limit_per_minute=100,
        rate_limit_per_second=50,
        admission_wait_seconds=5,
        admission_lease_seconds=lease,
        cache_stale_seconds=0,  # refusals must show, not be covered by degraded reads
    )
    results = await asyncio.gather(*(c.get(COMPANY, i) for i in range(300)))
    ok = sum(1 for r in results if r[0] == 200)
    refused = [r for r in results if r[0] == 429]
    assert fewest_ok <= ok <= 100
    assert len(refused) == 300 - ok
    assert all(r[1]["X-QBO-Gateway-Error"] == "GW-RATE-LIMITED" for r in refused)
    times = sorted(r.at for r in c.sim.api_requests)
    assert max(sum(1 for t in times if s <= t < s + 60) for s in times) <= 100


async def test_concurrency_limit_holds_across_three_replicas(factory: Any, backend: str) -> None:
    c: Cluster = await factory(
        replicas=3, clock=SystemClock(), concurrency_limit=10, admission_wait_seconds=10
    )
    c.sim.latency = 0.15
    results = await asyncio.gather(*(c.get(COMPANY, i) for i in range(45)))
    c.sim.latency = 0.0
    assert all(r[0] == 200 for r in results)
    assert c.sim.max_in_flight <= 10
    assert c.sim.max_in_flight >= 5  # the limit was actually reached, not avoided


async def test_redis_outage_under_load_fails_no_request(
    redis_factory: Any, redis_server: RedisServer
) -> None:
    # Limits high enough that a third of them per replica still admits the whole load: the
    # test is about Redis failing, not about the budget.
    c: Cluster = await redis_factory(
        replicas=3, clock=SystemClock(), rate_limit_per_second=300, rate_limit_per_minute=3000
    )
    for i in range(3):
        status, _h, _b = await c.get(COMPANY, i)
        assert status == 200
    redis_server.stop()
    try:
        results = await asyncio.gather(*(c.get(COMPANY, i) for i in range(60)))
        assert [r[0] for r in results] == [200] * 60
        assert all(gw.availability.up is False for gw in c.gateways)
        for gw in c.gateways:
            assert gw.metrics.registry.get_sample_value("qbo_gateway_state_backend_up") == 0
    finally:
        redis_server.start()
    for gw in c.gateways:
        for _ in range(100):
            if gw.availability.up:
                break
            await asyncio.sleep(0.05)
        assert gw.availability.up
    # Shared state is used again: a throttle seen by one replica pauses the others.
    c.sim.inject(FaultRule(kind="throttle", times=1, path="companyinfo"))
    await c.get(COMPANY, 0)
    await settle(c)
    status, headers, _b = await c.get(COMPANY, 2, headers={"Cache-Control": "no-cache"})
    assert status == 429 and headers["X-QBO-Gateway-Error"] == "GW-RATE-LIMITED"


async def test_retry_policy_through_the_gateway(factory: Any) -> None:
    c: Cluster = await factory(breaker_failure_threshold=50, cache_stale_seconds=0)
    reads = f"companyinfo/{REALM}"
    # A 503 on a read is retried (backoff on the injected clock): the caller sees the 200.
    c.sim.inject(FaultRule(kind="server_error_html", status=503, times=1, path="companyinfo"))
    before = len(c.sim.api_requests)
    status, _h, _b = await c.get(reads)
    assert status == 200
    assert len(c.sim.api_requests) - before == 2
    # A 500 is resubmitted once only, as Intuit says.
    c.sim.inject(FaultRule(kind="server_error", path="companyinfo"))
    before = len(c.sim.api_requests)
    status, _h, _b = await c.get(reads)
    assert status == 500
    assert len(c.sim.api_requests) - before == 2
    c.sim.clear_faults()
    # A write that QBO may have received is never repeated.
    c.sim.inject(FaultRule(kind="server_error_html", status=503, times=1, path="customer"))
    before = len(c.sim.api_requests)
    assert await post_customer(c) == 503
    assert len(c.sim.api_requests) - before == 1
    registry = c.gateways[0].metrics.registry
    assert (
        registry.get_sample_value("qbo_gateway_upstream_retries_total", {"cause": "status_503"})
        == 1
    )


class SkewedClock(SystemClock):
    """A replica whose wall clock is off by `skew` seconds, as pods' clocks drift."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def now(self) -> float:
        return super().now() + self.skew


@pytest.fixture
async def skewed_replicas(
    aiohttp_server: Any, tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[Cluster]:
    """Three replicas on one Redis, their clocks 0, 2 and 4 minutes apart, the Redis scripts
    on Redis `TIME` as in production: no clock is injected into the scripts."""
    sim, sim_server = await start_sim(aiohttp_server)
    c = Cluster(sim, sim.add_realm(REALM), SystemClock())
    for i in range(3):
        gw, proxy, _ops, _reg = await start_gateway(
            aiohttp_server,
            sim,
            sim_server,
            tmp_path / f"state{i}",
            clock=SkewedClock(120.0 * i),
            seed=c.pair if i == 0 else None,
            redis_prefix=redis_prefix,
            redis_time=True,
            redis_url=redis_server.url,
            token_keys=KEYS,
            replica_count=3,
            # The minute's budget is the limit under test; the per-second one may not be
            # below it (settings refuse a per-second limit above the per-minute one).
            rate_limit_per_second=20,
            rate_limit_per_minute=20,
            breaker_failure_threshold=5,
            breaker_recovery_seconds=300,
            cache_stale_seconds=0,  # refusals must show, not be covered by degraded reads
        )
        c.gateways.append(gw)
        c.urls.append(str(proxy.make_url("")).rstrip("/"))
    yield c
    await c.close()


async def test_skewed_replicas_share_one_rate_window_on_redis_time(
    skewed_replicas: Cluster,
) -> None:
    c = skewed_replicas
    results = await asyncio.gather(*(c.get(COMPANY, i % 3) for i in range(30)))
    # One rolling minute for the fleet, whatever each pod's clock says (a slice leased in
    # the burst and not spent may be refused before it is handed back: never more than 20).
    ok = sum(1 for r in results if r[0] == 200)
    assert 15 <= ok <= 20
    assert sorted(r[0] for r in results) == [200] * ok + [429] * (30 - ok)
    assert len(c.sim.api_requests) == ok


async def test_skewed_replicas_share_one_breaker_on_redis_time(skewed_replicas: Cluster) -> None:
    c = skewed_replicas
    c.sim.inject(FaultRule(kind="server_error", path="customer"))
    for _ in range(5):
        assert await post_customer(c, 0) == 500
        await settle(c)
    # The replica four minutes ahead sees the whole recovery time left: the open-until time
    # was written and is read on Redis' clock, not on either replica's.
    status, headers, _body = await c.get(COMPANY, 2)
    assert status == 503 and headers["X-QBO-Gateway-Error"] == "GW-CIRCUIT-OPEN"
    # (Had the scripts taken each replica's clock, 300 - 240 = 60 seconds would be left.)
    assert 298 <= int(headers["Retry-After"]) <= 300
