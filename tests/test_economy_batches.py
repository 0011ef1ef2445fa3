"""The meter's batches: paced, coalesced per counter, exact, and all written at shutdown.

A `Meter` over a real home (this process, or a private redis-server) whose `add` calls are
recorded on the way through. The flush interval is an hour, so "no second batch yet" is
the interval at work, not a race; `drained()` and `close()` are what end the wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from qbo_gateway.clock import ManualClock
from qbo_gateway.economy.backend_memory import MemoryMeterBackend
from qbo_gateway.economy.backend_redis import RedisMeterBackend
from qbo_gateway.economy.meter import Meter, MeterOptions
from qbo_gateway.economy.records import MeterBackend
from qbo_gateway.metrics import Metrics
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from tests.redis_server import RedisServer

REALM = "9130349226472226"


class Recorded:
    """A meter home whose batches are kept in order (the real home still does the work)."""

    def __init__(self, home: MeterBackend) -> None:
        self.home = home
        self.batches: list[dict[str, int]] = []

    async def add(self, month: str, fields: dict[str, int]) -> int:
        self.batches.append(dict(fields))
        return await self.home.add(month, fields)

    async def read(self, month: str) -> dict[str, int]:
        return await self.home.read(month)

    async def close(self) -> None:
        await self.home.close()


@pytest.fixture(params=["memory", "redis"])
async def home(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[Recorded]:
    if request.param == "memory":
        yield Recorded(MemoryMeterBackend())
        return
    client = make_redis(redis_server.url)
    yield Recorded(RedisMeterBackend(client, RedisKeys(redis_prefix)))
    await client.aclose()


def meter_over(home: Recorded, *, interval: float = 3600.0) -> Meter:
    return Meter(
        home,
        clock=ManualClock(),
        metrics=Metrics(CollectorRegistry()),
        options=MeterOptions(flush_interval=interval),
    )


async def first_batch_written(home: Recorded) -> None:
    for _ in range(1000):
        if home.batches:
            return
        await asyncio.sleep(0)
    raise AssertionError("the first batch was never written")


async def test_counts_within_an_interval_are_one_batch_one_field_each(home: Recorded) -> None:
    meter = meter_over(home)
    meter.start()
    try:
        meter.count(REALM, "billing", f"companyinfo/{REALM}", coreplus=True, probe=False)
        await first_batch_written(home)
        for _ in range(99):
            meter.count(REALM, "billing", f"companyinfo/{REALM}", coreplus=True, probe=False)
        meter.count(REALM, "billing", "customer", coreplus=False, probe=False)
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(home.batches) == 1  # the rest waits for the interval
        assert meter.used() == 100  # yet the figures already count it
        await meter.drained()
        assert home.batches[1] == {
            "total": 99,
            f"r:{REALM}": 99,
            "e:companyinfo": 99,
            "c:billing": 99,
            "core": 1,
        }
        month = await home.read(meter.month.label)
        assert (month["total"], month["core"], meter.used()) == (100, 1, 100)
    finally:
        await meter.close()


async def test_close_writes_what_the_interval_held_back(home: Recorded) -> None:
    meter = meter_over(home)
    meter.start()
    meter.count(REALM, "billing", "query", coreplus=True, probe=False)
    await first_batch_written(home)
    for _ in range(5):
        meter.count(REALM, "", "companyinfo", coreplus=True, probe=True)
    await meter.close()
    month = await home.read(meter.month.label)
    assert (month["total"], month["s:probe"], month["e:companyinfo"]) == (6, 5, 5)
    assert len(home.batches) == 2


async def test_two_replicas_batches_add_up_to_the_fleets_exact_total(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    clients = [make_redis(redis_server.url) for _ in range(2)]
    homes = [Recorded(RedisMeterBackend(c, RedisKeys(redis_prefix))) for c in clients]
    meters = [meter_over(h) for h in homes]
    try:
        for m in meters:
            m.start()
        for i in range(30):
            meters[i % 2].count(REALM, f"c{i % 3}", "companyinfo", coreplus=True, probe=False)
        for m in meters:
            await m.drained()
        figures = [await m.refresh() for m in meters]
        assert [f.used for f in figures] == [30, 30]
        month = await homes[0].read(meters[0].month.label)
        assert (month["c:c0"], month["c:c1"], month["c:c2"]) == (10, 10, 10)
    finally:
        for m in meters:
            await m.close()
        for c in clients:
            await c.aclose()
