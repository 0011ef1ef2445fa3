"""One behaviour suite for every meter home (this process, and one Redis hash per month).

The meter adds batches and reads a month back; both homes must agree on what that means.
Redis-only facts (one hash-tagged key per month, several writers adding up) follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from qbo_gateway.economy.backend_memory import MemoryMeterBackend
from qbo_gateway.economy.backend_redis import RedisMeterBackend
from qbo_gateway.economy.records import MeterBackend, entity_of, is_coreplus, month_of, zone_named
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from tests.redis_server import RedisServer, free_port
from tests.redis_topologies import REDIS_TARGETS, redis_target


@pytest.fixture(params=["memory", *REDIS_TARGETS])
async def backend(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[MeterBackend]:
    if request.param == "memory":
        yield MemoryMeterBackend()
        return
    client = redis_target(request, request.param).client()
    yield RedisMeterBackend(client, RedisKeys(redis_prefix))
    await client.aclose()


async def test_a_batch_adds_up_and_returns_the_month_total(backend: MeterBackend) -> None:
    assert await backend.read("2026-11") == {}
    assert await backend.add("2026-11", {"total": 3, "r:1": 2, "r:2": 1}) == 3
    assert await backend.add("2026-11", {"total": 2, "r:1": 2, "core": 4}) == 5
    assert await backend.read("2026-11") == {"total": 5, "r:1": 4, "r:2": 1, "core": 4}


async def test_months_are_counted_apart(backend: MeterBackend) -> None:
    await backend.add("2026-11", {"total": 7})
    assert await backend.add("2026-12", {"total": 1}) == 1
    assert (await backend.read("2026-11"))["total"] == 7
    assert (await backend.read("2026-12"))["total"] == 1


async def test_a_batch_without_metered_calls_still_reports_the_total(
    backend: MeterBackend,
) -> None:
    await backend.add("2026-11", {"total": 4})
    assert await backend.add("2026-11", {"core": 2}) == 4


async def test_replicas_writing_at_once_lose_nothing(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    clients = [make_redis(redis_server.url) for _ in range(4)]
    homes = [RedisMeterBackend(c, RedisKeys(redis_prefix)) for c in clients]
    await asyncio.gather(*(h.add("2026-11", {"total": 1, "c:a": 1}) for h in homes * 25))
    assert await homes[0].read("2026-11") == {"total": 100, "c:a": 100}
    key = RedisKeys(redis_prefix).coreplus_month("2026-11")
    assert "{qbo-economy}" in key  # one slot in Redis Cluster
    assert await clients[0].ttl(key) > 0
    for c in clients:
        await c.aclose()


async def test_redis_down_is_state_unavailable() -> None:
    client = make_redis(f"redis://127.0.0.1:{free_port()}/0")
    home = RedisMeterBackend(client, RedisKeys("x"))
    with pytest.raises(StateUnavailable):
        await home.add("2026-11", {"total": 1})
    with pytest.raises(StateUnavailable):
        await home.read("2026-11")
    await client.aclose()


def test_reads_are_coreplus_and_writes_core() -> None:
    assert is_coreplus("GET", "customer/1")
    assert is_coreplus("POST", "query")
    assert is_coreplus("GET", "reports/ProfitAndLoss")
    assert is_coreplus("GET", "cdc?entities=Customer")
    assert not is_coreplus("POST", "customer")
    assert not is_coreplus("POST", "invoice?operation=delete")
    assert not is_coreplus("POST", "batch")


def test_entities_are_bounded_names() -> None:
    assert entity_of("Customer/12") == "customer"
    assert entity_of("reports/ProfitAndLoss") == "reports"
    assert entity_of("query?query=select") == "query"
    assert entity_of("weird-thing!/1") == "other"
    assert entity_of("x" * 41) == "other"


def test_the_month_follows_its_time_zone() -> None:
    # 2026-12-01T03:00Z is still November in New York.
    at = 1_796_094_000.0
    assert month_of(at, zone_named("UTC")).label == "2026-12"
    new_york = month_of(at, zone_named("America/New_York"))
    assert new_york.label == "2026-11"
    assert new_york.end == 1_796_101_200.0  # 2026-12-01T05:00Z
    december = month_of(at, zone_named("UTC"))
    assert december.seconds == 31 * 86400
