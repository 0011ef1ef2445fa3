"""Redis hung or gone: the cache answers from this process at once, then shares again.

A hung Redis is the costly case: every call waits out the socket timeout. The proof that
the wait is paid once, not per request, is that Redis receives nothing after the first
call of an outage (a black-hole server counts what it is sent).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from qbo_gateway.cache.backend_memory import MemoryCacheBackend
from qbo_gateway.cache.backend_redis import RedisCacheBackend
from qbo_gateway.cache.fallback import FallbackCache
from qbo_gateway.cache.records import CachedEntry
from qbo_gateway.clock import ManualClock
from qbo_gateway.metrics import Metrics
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from tests.redis_server import RedisServer

REALM = "9341453000000002"


def entry(body: bytes = b'{"ok":true}') -> CachedEntry:
    return CachedEntry(
        realm_id=REALM,
        status=200,
        headers=(("Content-Type", "application/json"),),
        body=body,
        stored_at=1_800_000_000.0,
        fresh_epoch=0,
    )


@dataclass
class Home:
    cache: FallbackCache
    availability: BackendAvailability
    metrics: Metrics
    client: Redis

    def backend_up(self) -> float | None:
        return self.metrics.registry.get_sample_value("qbo_gateway_state_backend_up")


def build(url: str, prefix: str, **redis_kw: float) -> Home:
    client = make_redis(url, **redis_kw)
    metrics = Metrics(CollectorRegistry())
    availability = BackendAvailability(ping=client.ping, metrics=metrics, probe_interval=30)
    local = MemoryCacheBackend(max_bytes=1 << 20, clock=ManualClock(), metrics=metrics)
    cache = FallbackCache(
        RedisCacheBackend(client, RedisKeys(prefix)), local, availability=availability
    )
    return Home(cache, availability, metrics, client)


@pytest.fixture
async def black_hole() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP server that reads everything and answers nothing: a hung (SIGSTOPped) Redis."""
    received: list[bytes] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.append(chunk)
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], received
    server.close()
    await server.wait_closed()


async def test_hung_redis_is_waited_on_once_not_per_call(
    black_hole: tuple[int, list[bytes]], redis_prefix: str
) -> None:
    port, received = black_hole
    home = build(
        f"redis://127.0.0.1:{port}/0", redis_prefix, socket_timeout=0.1, connect_timeout=0.1
    )
    try:
        # The first call pays the timeout, marks Redis down and is answered locally.
        assert await home.cache.put(REALM, "k", entry(), ttl=60)
        assert home.backend_up() == 0.0
        seen = len(b"".join(received))
        assert seen > 0
        for i in range(20):
            got, _ = await home.cache.get(REALM, "k")
            assert got is not None and got.body == b'{"ok":true}'
            await home.cache.put(REALM, f"k{i}", entry(), ttl=60)
            await home.cache.end_freshness(REALM)
            await home.cache.epoch(REALM)
        assert len(b"".join(received)) == seen  # Redis is not asked again while down
    finally:
        await home.availability.close()
        await home.client.aclose()


async def test_reads_stored_while_down_are_local_and_shared_state_comes_back(
    redis_prefix: str,
) -> None:
    server = RedisServer()
    server.start()
    home = build(server.url, redis_prefix)
    try:
        await home.cache.put(REALM, "shared", entry(b"before"), ttl=60)
        server.stop()
        # Down: a write ends freshness locally; a read stored now lives in this process.
        assert await home.cache.get(REALM, "shared") == (None, 0)
        assert home.backend_up() == 0.0
        assert await home.cache.end_freshness(REALM) == 1
        assert await home.cache.put(REALM, "local", entry(b"during"), ttl=60)
        got, _ = await home.cache.get(REALM, "local")
        assert got is not None and got.body == b"during"

        server.start()
        assert await home.availability.check()
        # Redis again (a fresh server: what it held is gone); the outage's write reached it
        # first, so the shared epoch moved on and nothing stored before looks fresh.
        assert await home.cache.get(REALM, "local") == (None, 1)
        assert await home.cache.epoch(REALM) == 1
        assert await home.cache.end_freshness(REALM) == 2
    finally:
        await home.availability.close()
        await home.client.aclose()
        server.cleanup()


async def test_write_during_outage_ends_freshness_of_reads_kept_in_redis(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    home = build(redis_server.url, redis_prefix)
    try:
        await home.cache.put(REALM, "k", entry(), ttl=60)
        home.availability.mark_down(ConnectionError("test: Redis unreachable"))
        await home.cache.end_freshness(REALM)
        home.availability.mark_up()
        got, epoch = await home.cache.get(REALM, "k")
        assert got is not None
        assert (got.fresh_epoch, epoch) == (0, 1)  # stored before the write: not fresh
    finally:
        await home.availability.close()
        await home.client.aclose()
