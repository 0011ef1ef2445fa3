"""The cache's write-behind queue: stores answered at once, written in batches.

Over a real home (a private redis-server, or the in-process LRU whose batches are
recorded). The tick is an hour, so "not written yet" is the queue at work, not a race;
`flush_now`, a full batch and `close` are what write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from qbo_gateway.cache.backend_memory import MemoryCacheBackend
from qbo_gateway.cache.backend_redis import RedisCacheBackend
from qbo_gateway.cache.fallback import FallbackCache
from qbo_gateway.cache.records import CachedEntry, PendingStore
from qbo_gateway.cache.write_behind import QueueBounds, WriteBehindCache, queued_size
from qbo_gateway.clock import ManualClock
from qbo_gateway.metrics import Metrics
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from tests.cache_rig import start_rig
from tests.harness import REALM
from tests.redis_server import RedisServer, free_port
from tests.test_cache_backends import entry

HOUR = QueueBounds(interval=3600.0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = make_redis(redis_server.url)
    yield client
    await client.aclose()


def queue_over_redis(
    redis: Redis, prefix: str, clock: ManualClock, metrics: Metrics, bounds: QueueBounds = HOUR
) -> WriteBehindCache:
    return WriteBehindCache(
        RedisCacheBackend(redis, RedisKeys(prefix)), clock=clock, metrics=metrics, bounds=bounds
    )


class Recorded(MemoryCacheBackend):
    """The in-process home, with each batch it was handed kept in order."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(max_bytes=1 << 20, clock=clock)
        self.batches: list[list[str]] = []

    async def put_many(self, stores: list[PendingStore]) -> None:
        self.batches.append([s.key_hash for s in stores])
        await super().put_many(stores)


async def test_a_queued_store_is_served_before_it_is_written(
    redis: Redis, redis_prefix: str, clock: ManualClock, metrics: Metrics
) -> None:
    keys = RedisKeys(redis_prefix)
    cache = queue_over_redis(redis, redis_prefix, clock, metrics)
    assert await cache.put("111", "k", entry(body=b"queued"), ttl=60)
    assert await redis.exists(keys.cache_entry("111", "k")) == 0
    got, epoch = await cache.get("111", "k")
    assert got is not None and (got.body, got.realm_epoch, epoch) == (b"queued", 0, 0)
    await cache.flush_now()
    assert cache.queued == 0
    assert await redis.exists(keys.cache_entry("111", "k")) == 1
    got, _ = await cache.get("111", "k")
    assert got is not None and got.body == b"queued"
    await cache.close()


async def test_a_write_ends_the_freshness_of_a_queued_store_before_and_after_it_lands(
    redis: Redis, redis_prefix: str, clock: ManualClock, metrics: Metrics
) -> None:
    cache = queue_over_redis(redis, redis_prefix, clock, metrics)
    await cache.put("111", "k", entry(fresh_epoch=0), ttl=60)
    # The write's end of freshness is not queued behind the store: it is in Redis at once.
    assert await cache.end_freshness("111") == 1
    assert await redis.get(RedisKeys(redis_prefix).cache_fresh_epoch("111")) == b"1"
    got, _ = await cache.get("111", "k")
    assert got is not None and (got.fresh_epoch, got.realm_epoch) == (0, 1)
    await cache.flush_now()  # the store lands after the write: still stale
    got, _ = await cache.get("111", "k")
    assert got is not None and (got.fresh_epoch, got.realm_epoch) == (0, 1)
    await cache.close()


async def test_close_writes_what_is_queued(
    redis: Redis, redis_prefix: str, clock: ManualClock, metrics: Metrics
) -> None:
    keys = RedisKeys(redis_prefix)
    cache = queue_over_redis(redis, redis_prefix, clock, metrics)
    for i in range(3):
        await cache.put("111", f"k{i}", entry(body=b"%d" % i), ttl=600)
    clock.advance(100)  # time spent queued comes off the entry's TTL
    await cache.close()
    home = RedisCacheBackend(redis, keys)
    for i in range(3):
        got, _ = await home.get("111", f"k{i}")
        assert got is not None and got.body == b"%d" % i
        assert 490_000 < await redis.pttl(keys.cache_entry("111", f"k{i}")) <= 500_000


async def test_a_full_queue_drops_its_oldest_stores_never_an_end_of_freshness(
    redis: Redis, redis_prefix: str, clock: ManualClock, metrics: Metrics
) -> None:
    bounds = QueueBounds(interval=3600.0, batch=100, max_entries=3)
    cache = queue_over_redis(redis, redis_prefix, clock, metrics, bounds)
    for i in range(5):
        await cache.put("111", f"k{i}", entry(), ttl=60)
    assert await cache.end_freshness("111") == 1
    assert cache.queued == 3
    dropped = metrics.registry.get_sample_value(
        "qbo_gateway_cache_events_total", {"event": "queue_drop"}
    )
    assert dropped == 2
    assert await redis.get(RedisKeys(redis_prefix).cache_fresh_epoch("111")) == b"1"
    await cache.close()
    home = RedisCacheBackend(redis, RedisKeys(redis_prefix))
    assert [(await home.get("111", f"k{i}"))[0] is not None for i in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert await home.epoch("111") == 1


async def test_the_queue_is_bounded_in_bytes_too(clock: ManualClock, metrics: Metrics) -> None:
    one = entry(body=b"x" * 1000)
    bounds = QueueBounds(interval=3600.0, max_bytes=2 * queued_size(one))
    cache = WriteBehindCache(Recorded(clock), clock=clock, metrics=metrics, bounds=bounds)
    for i in range(3):
        assert await cache.put("111", f"k{i}", one, ttl=60)
    assert (cache.queued, cache.queued_bytes) == (2, 2 * queued_size(one))
    # An entry larger than the whole queue is not stored at all.
    assert not await cache.put("111", "big", entry(body=b"x" * 3000), ttl=60)
    await cache.close()


async def test_one_batch_per_tick_or_as_soon_as_a_batch_is_full(
    clock: ManualClock, metrics: Metrics
) -> None:
    home = Recorded(clock)
    bounds = QueueBounds(interval=3600.0, batch=4)
    cache = WriteBehindCache(home, clock=clock, metrics=metrics, bounds=bounds)

    async def settle() -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    for key in ("a", "b", "c", "b"):  # a key stored twice is written once, its newest answer
        await cache.put("111", key, entry(body=key.encode()), ttl=60)
        await settle()
    assert home.batches == []  # the tick holds them
    await cache.put("111", "d", entry(), ttl=60)
    await settle()
    assert home.batches == [["a", "c", "b", "d"]]  # four waiting: out at once
    await cache.put("111", "e", entry(), ttl=60)
    await settle()
    assert home.batches == [["a", "c", "b", "d"]]
    await cache.close()
    assert home.batches == [["a", "c", "b", "d"], ["e"]]


async def test_a_queued_store_past_its_ttl_is_not_served(
    clock: ManualClock, metrics: Metrics
) -> None:
    cache = WriteBehindCache(Recorded(clock), clock=clock, metrics=metrics, bounds=HOUR)
    await cache.put("111", "k", entry(), ttl=30)
    clock.advance(31)
    assert await cache.get("111", "k") == (None, 0)
    await cache.close()


async def test_while_redis_is_down_a_batch_lands_in_the_local_home(
    clock: ManualClock, metrics: Metrics
) -> None:
    dead = make_redis(f"redis://127.0.0.1:{free_port()}/0")
    availability = BackendAvailability(ping=dead.ping, metrics=metrics, probe_interval=30)
    local = MemoryCacheBackend(max_bytes=1 << 20, clock=clock, metrics=metrics)
    home = FallbackCache(
        RedisCacheBackend(dead, RedisKeys("down")), local, availability=availability
    )
    cache = WriteBehindCache(home, clock=clock, metrics=metrics, bounds=HOUR)
    try:
        await cache.put("111", "k", entry(body=b"kept"), ttl=60)
        await cache.flush_now()
        assert not availability.up
        got, _ = await local.get("111", "k")
        assert got is not None and got.body == b"kept"
        got, _ = await cache.get("111", "k")
        assert got is not None and got.body == b"kept"
    finally:
        await cache.close()
        await availability.close()
        await dead.aclose()


async def test_a_gateway_shut_down_right_after_a_read_has_written_its_store(
    aiohttp_server: Any, tmp_path: Path, redis_server: RedisServer, redis_prefix: str, redis: Redis
) -> None:
    rig = await start_rig(
        aiohttp_server,
        tmp_path,
        redis_prefix,
        redis_url=redis_server.url,
        token_keys=Fernet.generate_key().decode(),
    )
    queue = rig.gateway.cache.backend
    assert isinstance(queue, WriteBehindCache)
    queue.bounds = QueueBounds(interval=3600.0)  # held until the shutdown
    try:
        status, _, body = await rig.get(f"companyinfo/{REALM}")
        assert status == 200
        assert queue.queued == 1
    finally:
        await rig.close()
    stored = [k async for k in redis.scan_iter(match=f"{redis_prefix}:*:cache:*")]
    assert len(stored) == 1
    entry_bytes = await redis.get(stored[0])
    assert CachedEntry.decode(entry_bytes).body == body


async def test_a_delete_drops_the_queued_store_and_is_not_undone_by_a_batch(
    redis: Redis, redis_prefix: str, clock: ManualClock, metrics: Metrics
) -> None:
    keys = RedisKeys(redis_prefix)
    cache = queue_over_redis(redis, redis_prefix, clock, metrics)
    await cache.put("111", "gone", entry(body=b"v1"), ttl=60)
    await cache.flush_now()
    await cache.put("111", "gone", entry(body=b"v2"), ttl=60)
    await cache.put("111", "kept", entry(), ttl=60)
    await cache.delete("111", "gone")
    assert await cache.get("111", "gone") == (None, 0)
    assert cache.queued == 1
    await cache.close()
    assert await redis.exists(keys.cache_entry("111", "gone")) == 0
    assert await redis.exists(keys.cache_entry("111", "kept")) == 1
