"""A day of traffic through whole gateways on the injected clock, embedded and on Redis.

25 hours of reads go through the proxy to the simulator; QBO's answer time is set on the
injected clock by a middleware in front of the simulator (normal: 0.2 s). At hour 10 QBO
fails writes until the circuit opens and, after its recovery time, a read closes it; at hours 15 and
16 it is slow (8 s). The health API then shows: history covering the last 24 hours and no
more, the incident's time to detect and to recover exactly as the clock says, its downtime
in the uptime ratio, and the slow hours turning the response-time target to not met. In
Redis mode a second gateway started afterwards shows the same figures (the fleet's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.fernet import Fernet

from qbo_gateway.admission.records import BreakerState
from qbo_gateway.app import Gateway
from qbo_gateway.clock import ManualClock
from qbo_gateway.simulator import FaultRule, Simulator
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from tests.harness import REALM, start_gateway
from tests.redis_server import RedisServer

HOUR = 3600.0
KEYS = Fernet.generate_key().decode()
PER_HOUR = 5
SLOW_PER_HOUR = 20


class Day:
    """One simulator whose answers take `answer_seconds` on the injected clock."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.answer_seconds = 0.2
        self.sim = Simulator(
            client_id="test-client", client_secret="test-client-secret-value", clock=clock.now
        )
        self.pair = self.sim.add_realm(REALM)
        self.sent: list[float] = []  # when each read was sent

    def app(self) -> web.Application:
        app = self.sim.make_app()

        @web.middleware
        async def answer_time(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if request.path.startswith("/v3/"):
                self.clock.advance(self.answer_seconds)
            return await handler(request)

        app.middlewares.append(answer_time)
        return app


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def day(
    backend: str, aiohttp_server: Any, tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[tuple[Day, Callable[[int], Awaitable[Gateway]], str]]:
    d = Day(ManualClock())
    sim_server = await aiohttp_server(d.app())
    extra: dict[str, Any] = {"redis_url": redis_server.url, "token_keys": KEYS}
    gateways: list[Gateway] = []

    async def gateway(i: int) -> Gateway:
        gw, proxy, ops, _ = await start_gateway(
            aiohttp_server,
            d.sim,
            sim_server,
            tmp_path / f"state{i}",
            clock=d.clock,
            seed=d.pair if i == 0 else None,
            redis_prefix=redis_prefix,
            breaker_failure_threshold=5,
            breaker_recovery_seconds=90.0,
            # Minute buckets (the default is five minutes): the window's edge is checked to
            # the minute below.
            health_bucket_seconds=60.0,
            **(extra if backend == "redis" else {}),
        )
        gw.proxy_url = str(proxy.make_url("")).rstrip("/")  # type: ignore[attr-defined]
        gw.ops_url = str(ops.make_url("")).rstrip("/")  # type: ignore[attr-defined]
        gateways.append(gw)
        return gw

    yield d, gateway, redis_prefix
    for gw in gateways:
        await gw.close()


async def read(session: aiohttp.ClientSession, gw: Gateway, d: Day) -> int:
    d.sent.append(d.clock.now())
    url = f"{gw.proxy_url}/v3/company/{REALM}/companyinfo/{REALM}"  # type: ignore[attr-defined]
    async with session.get(url, headers={"Cache-Control": "no-cache"}) as resp:
        await resp.read()
        status = resp.status
    await gw.admitter.drain()
    return status


async def write(session: aiohttp.ClientSession, gw: Gateway, d: Day) -> int:
    """A write: never retried, so one request is one attempt (no backoff on the clock)."""
    d.sent.append(d.clock.now())
    url = f"{gw.proxy_url}/v3/company/{REALM}/customer"  # type: ignore[attr-defined]
    async with session.post(url, json={"DisplayName": "x"}) as resp:
        await resp.read()
        status = resp.status
    await gw.admitter.drain()
    return status


async def business(session: aiohttp.ClientSession, gw: Gateway) -> dict[str, Any]:
    await gw.health.flush()
    async with session.get(f"{gw.ops_url}/health/business/{REALM}") as resp:  # type: ignore[attr-defined]
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
        return doc


async def incident(session: aiohttp.ClientSession, gw: Gateway, d: Day) -> tuple[float, float]:
    """QBO fails: 20 s between the first two failed writes, then writes until the circuit
    opens; 90 s later (its recovery time) QBO is back and the next read closes it. QBO
    answers at once meanwhile, so the clock moves only where this says."""
    d.answer_seconds = 0.0
    d.sim.inject(FaultRule(kind="server_error", path="customer"))
    assert await write(session, gw, d) >= 500
    d.clock.advance(20)
    stats = gw.health.table.stats_for(REALM)
    for _ in range(6):
        if stats.breaker is BreakerState.OPEN:
            break
        assert await write(session, gw, d) >= 500
    assert stats.breaker is BreakerState.OPEN
    opened = gw.health.alerts.active_for(REALM)["circuit_open"].raised_at
    d.clock.advance(90)
    d.sim.clear_faults()
    assert await read(session, gw, d) == 200
    assert stats.breaker is BreakerState.CLOSED
    return opened, d.clock.now()


async def test_a_day_of_traffic_measures_history_sla_and_recovery(
    day: tuple[Day, Callable[[int], Awaitable[Gateway]], str], backend: str
) -> None:
    d, gateway, prefix = day
    gw = await gateway(0)
    started = d.clock.now()
    first_failure = opened = closed = 0.0
    async with aiohttp.ClientSession() as session:
        for hour in range(25):
            slow = hour in (15, 16)
            d.answer_seconds = 8.0 if slow else 0.2
            for _ in range(SLOW_PER_HOUR if slow else PER_HOUR):
                assert await read(session, gw, d) == 200
                d.clock.advance(60)
            if hour == 10:
                first_failure = d.clock.now()
                opened, closed = await incident(session, gw, d)
            d.clock.advance(started + (hour + 1) * HOUR - d.clock.now())
        doc = await business(session, gw)
        now = d.clock.now()
        sla = doc["sla"]
        # History covers the last 24 hours and no more: hour 0's reads are gone.
        in_window = [t for t in d.sent if t > now - 24 * HOUR]
        assert sla["requests"] == len(in_window) < len(d.sent)
        assert sum(p["requests"] for p in doc["timeline"]) == len(in_window)
        assert len(doc["timeline"]) == 24 and sla["window_seconds"] <= 24 * HOUR
        # The incident: detected 20 s after its first failure (the second failed write),
        # recovered (open to closed) in the 90 s the clock was moved, down until closed.
        assert sla["time_to_detect_seconds"] == {"worst": 20.0, "average": 20.0, "count": 1}
        assert sla["targets"]["time_to_detect_seconds"]["met"] is True
        assert sla["time_to_recover_seconds"]["worst"] == pytest.approx(closed - opened)
        assert sla["targets"]["time_to_recover_seconds"]["met"] is True
        down = closed - first_failure
        assert sla["downtime_seconds"] == pytest.approx(down, abs=0.1)
        assert sla["uptime_ratio"] == pytest.approx(1 - down / sla["window_seconds"], abs=1e-5)
        assert sla["targets"]["uptime_ratio"]["met"] is False  # 2 minutes down in a day
        # The slow hours: their points are slow, and they pull the day's average over 2 s.
        slow_points = [p for p in doc["timeline"] if (p["avg_response_seconds"] or 0) > 2]
        assert [p["avg_response_seconds"] for p in slow_points] == [8.0, 8.0]
        assert sla["avg_response_seconds"] > 2.0
        assert sla["targets"]["avg_response_seconds"]["met"] is False
        assert sla["p95_response_seconds"] == 10.0  # the histogram bin holding 8 s
        assert doc["breaker"]["counts"] == "attempts"
        await _alerts_say_what_they_count(session, gw)
        if backend == "redis":
            await _shared_and_bounded(session, gateway, doc, RedisKeys(prefix))


async def _alerts_say_what_they_count(session: aiohttp.ClientSession, gw: Gateway) -> None:
    url = f"{gw.ops_url}/health/alerts?state=all"  # type: ignore[attr-defined]
    async with session.get(url) as resp:
        alerts = {a["kind"]: a for a in await resp.json()}
    failures, circuit = alerts["consecutive_failures"], alerts["circuit_open"]
    assert failures["value_counts"] == "failed requests"
    assert failures["message"] == "5 or more consecutive failed requests to QuickBooks"
    assert "failed attempts" in circuit["message"] and "retry" in circuit["message"]


async def _shared_and_bounded(
    session: aiohttp.ClientSession,
    gateway: Callable[[int], Awaitable[Gateway]],
    doc: Any,
    keys: RedisKeys,
) -> None:
    """A replica started now shows the fleet's figures; every bucket key expires."""
    second = await gateway(1)
    again = await business(session, second)
    assert again["sla"] == doc["sla"] and again["timeline"] == doc["timeline"]
    redis = make_redis(second.settings.redis_url or "")
    try:
        names = [k async for k in redis.scan_iter(match=keys.realm_key(REALM, "hb:*"))]
        assert 0 < len(names) <= 24 * 60 + 1
        ttls = [await redis.pttl(name) for name in names]
        assert all(0 < t <= (24 * 60 + 1) * 60_000 for t in ttls)
    finally:
        await redis.aclose()
