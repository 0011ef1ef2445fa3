"""One behaviour suite for every cache home (in-process LRU and Redis).

"Works in embedded mode" and "works with Redis" must mean the same thing, so each promise
of `CacheBackend` is tested once and run against both. Backend-only facts (the LRU's byte
bound, Redis TTLs and outages) follow the shared suite.
"""

from __future__ import annotations

import gc
import hashlib
import tracemalloc
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from qbo_gateway.cache.backend_memory import MemoryCacheBackend, entry_cost
from qbo_gateway.cache.backend_redis import RedisCacheBackend
from qbo_gateway.cache.fallback import FallbackCache
from qbo_gateway.cache.records import CacheBackend, CachedEntry, CorruptEntry, PendingStore
from qbo_gateway.cache.write_behind import QueueBounds, WriteBehindCache
from qbo_gateway.clock import ManualClock
from qbo_gateway.metrics import Metrics
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import RedisClient, make_redis
from tests.redis_server import RedisServer, free_port
from tests.redis_topologies import REDIS_TARGETS, redis_target

BACKENDS = ["memory", "redis", "fallback"]


async def open_backend(
    kind: str,
    *,
    clock: ManualClock,
    metrics: Metrics,
    redis_server: RedisServer,
    prefix: str,
    max_bytes: int = 1 << 20,
) -> tuple[CacheBackend, Redis | None]:
    """A cache home of `kind`; the Redis client (to close) when there is one."""
    if kind == "memory":
        return MemoryCacheBackend(max_bytes=max_bytes, clock=clock, metrics=metrics), None
    client = make_redis(redis_server.url)
    shared = RedisCacheBackend(client, RedisKeys(prefix))
    if kind == "redis":
        return shared, client
    availability = BackendAvailability(ping=client.ping, metrics=metrics, probe_interval=30)
    local = MemoryCacheBackend(max_bytes=max_bytes, clock=clock, metrics=metrics)
    return FallbackCache(shared, local, availability=availability), client


def entry(realm: str = "111", body: bytes = b'{"ok":true}', **changes: object) -> CachedEntry:
    fields: dict[str, object] = {
        "realm_id": realm,
        "status": 200,
        "headers": (("Content-Type", "application/json"),),
        "body": body,
        "stored_at": 1_800_000_000.0,
        "fresh_epoch": 0,
    }
    fields.update(changes)
    return CachedEntry(**fields)  # type: ignore[arg-type]  # fields are built above


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture(params=["memory", *REDIS_TARGETS, "redis-queued"])
async def backend(
    request: pytest.FixtureRequest,
    clock: ManualClock,
    metrics: Metrics,
    redis_prefix: str,
) -> AsyncIterator[CacheBackend]:
    client: RedisClient | None = None
    if request.param == "memory":
        home: CacheBackend = MemoryCacheBackend(max_bytes=1 << 20, clock=clock, metrics=metrics)
    elif request.param == "redis-queued":
        # Redis mode's home: stores queued an hour (the suite reads them from the queue).
        client = redis_target(request, "redis").client()
        home = WriteBehindCache(
            RedisCacheBackend(client, RedisKeys(redis_prefix)),
            clock=clock,
            metrics=metrics,
            bounds=QueueBounds(interval=3600.0),
        )
    else:
        client = redis_target(request, request.param).client()
        home = RedisCacheBackend(client, RedisKeys(redis_prefix))
    yield home
    await home.close()
    if client is not None:
        await client.aclose()


# --- the shared suite -------------------------------------------------------------------


async def test_missing_entry_is_none_with_epoch_zero(backend: CacheBackend) -> None:
    assert await backend.get("111", "abc") == (None, 0)
    assert await backend.epoch("111") == 0


async def test_delete_forgets_only_that_entry(backend: CacheBackend) -> None:
    assert await backend.put("111", "gone", entry(), ttl=60)
    assert await backend.put("111", "kept", entry(), ttl=60)
    assert await backend.put("222", "gone", entry(realm="222"), ttl=60)
    await backend.delete("111", "gone")
    await backend.delete("111", "never-stored")
    assert (await backend.get("111", "gone"))[0] is None
    assert (await backend.get("111", "kept"))[0] is not None
    assert (await backend.get("222", "gone"))[0] is not None


async def test_round_trip_keeps_status_headers_and_binary_body(backend: CacheBackend) -> None:
    body = b"line one\nline two\n\x00\xff binary"
    stored = entry(
        body=body,
        headers=(("Content-Type", "application/pdf"), ("ETag", '"7"')),
        fresh_epoch=0,
    )
    assert await backend.put("111", "k1", stored, ttl=60)
    got, epoch = await backend.get("111", "k1")
    assert got is not None
    assert (got.realm_id, got.status, got.headers, got.body) == (
        "111",
        200,
        (("Content-Type", "application/pdf"), ("ETag", '"7"')),
        body,
    )
    assert got.stored_at == stored.stored_at
    assert epoch == 0 and got.realm_epoch == 0


async def test_same_hash_in_another_realm_is_a_miss(backend: CacheBackend) -> None:
    await backend.put("111", "same", entry(realm="111"), ttl=60)
    assert await backend.get("222", "same") == (None, 0)
    got, _ = await backend.get("111", "same")
    assert got is not None and got.realm_id == "111"


async def test_put_replaces_previous_entry(backend: CacheBackend) -> None:
    await backend.put("111", "k", entry(body=b"old"), ttl=60)
    await backend.put("111", "k", entry(body=b"new"), ttl=60)
    got, _ = await backend.get("111", "k")
    assert got is not None and got.body == b"new"


async def test_end_freshness_advances_one_realms_epoch_only(backend: CacheBackend) -> None:
    await backend.put("111", "k", entry(fresh_epoch=0), ttl=60)
    assert await backend.end_freshness("111") == 1
    assert await backend.end_freshness("111") == 2
    assert await backend.epoch("111") == 2
    assert await backend.epoch("222") == 0
    got, epoch = await backend.get("111", "k")
    assert got is not None
    assert (got.fresh_epoch, got.realm_epoch, epoch) == (0, 2, 2)


async def test_a_batch_is_stored_like_single_puts(backend: CacheBackend) -> None:
    await backend.put("111", "k1", entry(body=b"old"), ttl=60)
    await backend.put_many(
        [
            PendingStore("111", "k1", entry(body=b"one"), 60),
            PendingStore("222", "k2", entry(realm="222", body=b"two"), 60),
            PendingStore("111", "k3", entry(body=b"gone"), 0),
        ]
    )
    one, _ = await backend.get("111", "k1")
    two, _ = await backend.get("222", "k2")
    assert (one and one.body, two and two.body) == (b"one", b"two")
    assert await backend.get("111", "k3") == (None, 0)


async def test_non_positive_ttl_is_not_stored(backend: CacheBackend) -> None:
    assert not await backend.put("111", "k", entry(), ttl=0)
    assert await backend.get("111", "k") == (None, 0)


# --- in-process LRU ---------------------------------------------------------------------


async def test_memory_entry_expires_with_its_ttl(clock: ManualClock, metrics: Metrics) -> None:
    home = MemoryCacheBackend(max_bytes=1 << 20, clock=clock, metrics=metrics)
    await home.put("111", "k", entry(), ttl=30)
    clock.advance(29.9)
    assert (await home.get("111", "k"))[0] is not None
    clock.advance(0.2)
    assert (await home.get("111", "k"))[0] is None
    assert home.bytes_held == 0 and len(home) == 0


async def test_memory_stays_within_byte_bound_over_10000_distinct_reads(
    clock: ManualClock, metrics: Metrics
) -> None:
    bound = 64 * 1024
    home = MemoryCacheBackend(max_bytes=bound, clock=clock, metrics=metrics)
    peak = 0
    for i in range(10_000):
        body = b"x" * (100 + (i * 37) % 900)
        assert await home.put("111", f"key-{i}", entry(body=body), ttl=600)
        peak = max(peak, home.bytes_held)
        assert home.bytes_held <= bound
    assert peak > bound * 0.9  # the bound was actually reached, not trivially respected
    assert metrics.registry.get_sample_value("qbo_gateway_cache_bytes") == home.bytes_held
    evicted = metrics.registry.get_sample_value(
        "qbo_gateway_cache_events_total", {"event": "evict"}
    )
    assert evicted == 10_000 - len(home)
    # The newest read is held, the oldest long gone.
    assert (await home.get("111", "key-9999"))[0] is not None
    assert (await home.get("111", "key-0"))[0] is None


async def test_memory_evicts_least_recently_used(clock: ManualClock) -> None:
    one = entry(body=b"a" * 100)
    room = 3 * entry_cost("k0", one)
    home = MemoryCacheBackend(max_bytes=room, clock=clock)
    for i in range(3):
        await home.put("111", f"k{i}", one, ttl=60)
    await home.get("111", "k0")  # k0 is now the most recently used
    await home.put("111", "k3", one, ttl=60)
    assert (await home.get("111", "k1"))[0] is None
    for kept in ("k0", "k2", "k3"):
        assert (await home.get("111", kept))[0] is not None


async def test_memory_refuses_an_entry_larger_than_the_bound(clock: ManualClock) -> None:
    home = MemoryCacheBackend(max_bytes=1000, clock=clock)
    await home.put("111", "small", entry(body=b"s" * 100), ttl=60)
    assert not await home.put("111", "big", entry(body=b"b" * 1000), ttl=60)
    # Refusing the big one must not have evicted what was there.
    assert (await home.get("111", "small"))[0] is not None
    assert home.bytes_held == entry_cost("small", entry(body=b"s" * 100))


async def test_memory_bound_counts_what_entries_really_take(clock: ManualClock) -> None:
    """The byte bound is worth what it counts: within 20% of the memory entries occupy."""
    home = MemoryCacheBackend(max_bytes=1 << 30, clock=clock)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5_000):
            # Fresh objects for every part, as a parsed request and answer would have.
            realm = str(9_130_349_226_472_226 + i % 7)
            headers = (("".join(["Content-", "Type"]), f"application/json; n={i % 3}"),)
            body = b'{"CompanyInfo":{"Id":"%d","pad":"%s"}}' % (i, b"x" * (i % 400))
            held = CachedEntry(realm, 200, headers, body, clock.now(), -1)
            assert await home.put(realm, hashlib.sha256(body).hexdigest(), held, ttl=60)
        del held, body, headers, realm
        gc.collect()
        real = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.8 * real <= home.bytes_held <= 1.2 * real


# --- Redis ------------------------------------------------------------------------------


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = make_redis(redis_server.url)
    yield client
    await client.aclose()


async def test_redis_entry_ttl_is_the_given_window(redis_client: Redis, redis_prefix: str) -> None:
    keys = RedisKeys(redis_prefix)
    home = RedisCacheBackend(redis_client, keys)
    await home.put("111", "k", entry(), ttl=86_400)
    pttl = await redis_client.pttl(keys.cache_entry("111", "k"))
    assert 86_390_000 < pttl <= 86_400_000
    await home.end_freshness("111")
    # The epoch never expires: restarting from 0 could make old entries fresh again.
    assert await redis_client.pttl(keys.cache_fresh_epoch("111")) == -1


async def test_redis_keys_carry_the_realm_hash_tag(redis_client: Redis, redis_prefix: str) -> None:
    keys = RedisKeys(redis_prefix)
    await RedisCacheBackend(redis_client, keys).put("111", "k", entry(), ttl=60)
    found = [k async for k in redis_client.scan_iter(match=f"{redis_prefix}:*")]
    assert found == [f"{redis_prefix}:{{qbo:111}}:cache:k".encode()]


async def test_redis_corrupt_value_raises_corrupt_entry(
    redis_client: Redis, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    await redis_client.set(keys.cache_entry("111", "k"), b"not an entry")
    with pytest.raises(CorruptEntry):
        await RedisCacheBackend(redis_client, keys).get("111", "k")


async def test_redis_entry_of_another_realm_under_a_key_is_refused(
    redis_client: Redis, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    await redis_client.set(keys.cache_entry("111", "k"), entry(realm="222").encode())
    with pytest.raises(CorruptEntry):
        await RedisCacheBackend(redis_client, keys).get("111", "k")


async def test_redis_unreachable_raises_state_unavailable() -> None:
    client = make_redis(f"redis://127.0.0.1:{free_port()}/0")
    home = RedisCacheBackend(client, RedisKeys("down"))
    try:
        with pytest.raises(StateUnavailable):
            await home.get("111", "k")
        with pytest.raises(StateUnavailable):
            await home.put("111", "k", entry(), ttl=60)
        with pytest.raises(StateUnavailable):
            await home.epoch("111")
        with pytest.raises(StateUnavailable):
            await home.end_freshness("111")
    finally:
        await client.aclose()
