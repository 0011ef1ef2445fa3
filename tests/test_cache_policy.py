"""The read cache's decisions and its entries, without the proxy: plain Python, real backends.

What a caller sees of the cache is tested through whole gateways (`test_cache.py`); this
file holds what is easier to state directly: key identity, `Cache-Control` directives, the
degraded-reason mapping, and `ResponseCache` facts over both backends (corrupt entries,
freshness epochs seen by another replica, the in-process byte bound).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from qbo_gateway.cache.backend_memory import MemoryCacheBackend
from qbo_gateway.cache.policy import (
    allows_fresh,
    allows_stale,
    degraded_reason,
    degraded_reason_for_upstream,
    key_for,
)
from qbo_gateway.cache.records import CacheBackend
from qbo_gateway.cache.response_cache import ResponseCache
from qbo_gateway.clock import ManualClock
from qbo_gateway.faults import (
    CircuitOpen,
    GatewayError,
    RateLimited,
    ReconnectRequired,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import NullObserver
from qbo_gateway.state.keys import RedisKeys
from tests.redis_server import RedisServer
from tests.test_cache_backends import BACKENDS, open_backend

REALM_A = "1111"
REALM_B = "2222"
STALE = 3600.0
HEADERS = {"Content-Type": "application/json", "intuit_tid": "t", "Set-Cookie": "a=b"}


def make_cache(
    backend: CacheBackend, clock: ManualClock, *, fresh: float = 0.0, metrics: Metrics | None = None
) -> ResponseCache:
    return ResponseCache(
        backend,
        clock=clock,
        metrics=metrics or Metrics(CollectorRegistry()),
        observer=NullObserver(),
        fresh_seconds=fresh,
        stale_seconds=STALE,
        max_entry_bytes=4096,
    )


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[CacheBackend]:
    clock = ManualClock()
    found, redis = await open_backend(
        request.param,
        clock=clock,
        metrics=Metrics(CollectorRegistry()),
        redis_server=redis_server,
        prefix=redis_prefix,
    )
    yield found
    if redis is not None:
        await redis.aclose()


def test_keys_differ_by_realm_and_every_part_of_the_read() -> None:
    key = key_for
    base = key(REALM_A, "GET", "/v3/company/1111/invoice/7", [("a", "1")], b"", None)
    assert base.realm_id == REALM_A
    other_realm = key(REALM_B, "GET", "/v3/company/1111/invoice/7", [("a", "1")], b"", None)
    # The realm is in the digest too, not only beside it: scoping does not rest on one layer.
    assert other_realm.digest != base.digest
    assert key(REALM_A, "POST", "/v3/company/1111/invoice/7", [("a", "1")], b"", None) != base
    assert key(REALM_A, "GET", "/v3/company/1111/invoice/8", [("a", "1")], b"", None) != base
    assert key(REALM_A, "GET", "/v3/company/1111/invoice/7", [("a", "2")], b"", None) != base
    assert key(REALM_A, "GET", "/v3/company/1111/invoice/7", [("a", "1")], b"x", None) != base
    assert (
        key(REALM_A, "GET", "/v3/company/1111/invoice/7", [("a", "1")], b"", "application/xml")
        != base
    )
    # Unambiguous encoding: moving a character between name and value changes the key.
    assert key(REALM_A, "GET", "/p", [("ab", "c")], b"", None) != key(
        REALM_A, "GET", "/p", [("a", "bc")], b"", None
    )
    same = key(
        REALM_A,
        "GET",
        "/v3/company/1111/invoice/7",
        [("RequestId", "r1"), ("a", "1"), ("minorversion", "70")],
        b"",
        "application/json",
    )
    assert same == base


def test_cache_control_directives() -> None:
    assert allows_stale(None) and allows_stale("max-age=10") and allows_fresh("no-store")
    assert not allows_stale("No-Cache") and not allows_fresh("max-age=10 , no-cache")
    assert allows_stale("max-age=0") and not allows_fresh("max-age=0")


def test_degraded_reason_mapping() -> None:
    assert degraded_reason(CircuitOpen()) == "circuit-open"
    assert degraded_reason(RateLimited()) == "rate-limited"
    assert degraded_reason(UpstreamTimeout()) == "upstream-timeout"
    assert degraded_reason(UpstreamUnavailable()) == "upstream-error"
    assert degraded_reason(ReconnectRequired()) == "reconnect-required"
    assert degraded_reason(GatewayError()) is None
    assert degraded_reason_for_upstream(503) == "upstream-error"
    assert degraded_reason_for_upstream(200, b'{"Fault":{"Error":[{"code":"6002"}]}}') == (
        "upstream-error"
    )
    assert degraded_reason_for_upstream(400) is None
    assert degraded_reason_for_upstream(401) is None
    assert degraded_reason_for_upstream(200, b"{}") is None


# --- ResponseCache over both backends -------------------------------------------------------


async def test_stored_read_keeps_only_content_headers(backend: CacheBackend) -> None:
    cache = make_cache(backend, ManualClock())
    key = key_for(REALM_A, "GET", "invoice/7", [], b"", None)
    assert await cache.store(key, 200, HEADERS, b"{}", request_cache_control=None)
    found = await cache.lookup(key)
    assert found.entry is not None
    assert found.entry.headers == (("Content-Type", "application/json"),)
    assert (await cache.lookup(key_for(REALM_B, "GET", "invoice/7", [], b"", None))).entry is None


async def test_stale_response_refuses_an_unknown_reason(backend: CacheBackend) -> None:
    cache = make_cache(backend, ManualClock())
    key = key_for(REALM_A, "GET", "invoice/7", [], b"", None)
    await cache.store(key, 200, HEADERS, b"{}", request_cache_control=None)
    found = await cache.lookup(key)
    assert found.entry is not None
    with pytest.raises(ValueError, match="unknown degraded reason"):
        cache.stale_response(found.entry, "because")


async def test_write_while_freshness_is_off_still_ends_freshness(backend: CacheBackend) -> None:
    """A replica or restart with freshness on must not see pre-write reads as fresh."""
    clock = ManualClock()
    without = make_cache(backend, clock)
    key = key_for(REALM_A, "GET", "invoice/7", [], b"", None)
    await without.store(key, 200, HEADERS, b"{}", request_cache_control=None)
    await without.end_freshness(REALM_A)
    with_freshness = make_cache(backend, clock, fresh=60)
    found = await with_freshness.lookup(key)
    assert found.entry is not None
    assert not with_freshness.fresh(found.entry)
    assert with_freshness.servable_stale(found.entry)


async def test_corrupt_redis_entry_is_a_miss(redis_server: RedisServer, redis_prefix: str) -> None:
    clock = ManualClock()
    backend, redis = await open_backend(
        "redis",
        clock=clock,
        metrics=Metrics(CollectorRegistry()),
        redis_server=redis_server,
        prefix=redis_prefix,
    )
    assert redis is not None
    try:
        cache = make_cache(backend, clock)
        key = key_for(REALM_A, "GET", "invoice/7", [], b"", None)
        await redis.set(RedisKeys(redis_prefix).cache_entry(REALM_A, key.digest), b"junk")
        assert (await cache.lookup(key)).entry is None
    finally:
        await redis.aclose()


async def test_in_process_cache_stays_in_bound_while_10000_reads_pass() -> None:
    clock = ManualClock()
    metrics = Metrics(CollectorRegistry())
    bound = 256 * 1024
    backend = MemoryCacheBackend(max_bytes=bound, clock=clock, metrics=metrics)
    cache = make_cache(backend, clock, metrics=metrics)
    for i in range(10_000):
        key = key_for(REALM_A, "GET", f"invoice/{i}", [], b"", None)
        body = b'{"Invoice":{"Id":"%d","pad":"%s"}}' % (i, b"x" * (i % 2000))
        assert await cache.store(key, 200, HEADERS, body, request_cache_control=None)
        assert backend.bytes_held <= bound
        if i % 100 == 0:  # reading the registry is slow; the gauge follows every put
            assert metrics.registry.get_sample_value("qbo_gateway_cache_bytes") == (
                backend.bytes_held
            )
    assert backend.bytes_held > bound * 0.9
    last = await cache.lookup(key_for(REALM_A, "GET", "invoice/9999", [], b"", None))
    assert last.entry is not None
    assert (
        metrics.registry.get_sample_value("qbo_gateway_cache_events_total", {"event": "evict"}) or 0
    ) > 9_000
