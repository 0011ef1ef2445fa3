"""A read is stored after its reply has gone out, and this replica still finds it at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from qbo_gateway.cache.backend_memory import MemoryCacheBackend
from qbo_gateway.cache.policy import CacheKey
from qbo_gateway.cache.records import CachedEntry
from qbo_gateway.cache.response_cache import ResponseCache
from qbo_gateway.clock import ManualClock
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import NullObserver
from tests.harness import REALM, start_stack, stop_stack


class HeldBackend(MemoryCacheBackend):
    """An in-process home whose stores wait until the test lets them through."""

    def __init__(self, clock: ManualClock | Any) -> None:
        super().__init__(max_bytes=1 << 20, clock=clock)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def put(self, realm_id: str, key_hash: str, entry: CachedEntry, *, ttl: float) -> bool:
        self.entered.set()
        await self.release.wait()
        return await super().put(realm_id, key_hash, entry, ttl=ttl)


async def test_the_reply_does_not_wait_for_the_store(aiohttp_server: Any, tmp_path: Path) -> None:
    s = await start_stack(aiohttp_server, tmp_path)
    try:
        held = HeldBackend(s.gateway.clock)
        s.gateway.cache.backend = held

        async def first_read() -> None:
            async with s.session.get(s.api(f"companyinfo/{REALM}")) as resp:
                assert resp.status == 200
                await resp.read()

        # With the store held, a reply that waited for it would never come: fail, not hang.
        await asyncio.wait_for(first_read(), timeout=30)
        await held.entered.wait()  # the store began only now, and is still held
        assert len(held) == 0
        held.release.set()
        async with s.session.get(s.api(f"companyinfo/{REALM}")) as resp:
            assert resp.status == 200
            body = await resp.read()
        assert len(held) == 1
        entry, _ = await held.get(REALM, next(iter(held._entries))[1])
        assert entry is not None and entry.body == body
    finally:
        await stop_stack(s)


async def test_a_lookup_waits_for_a_store_under_way() -> None:
    clock = ManualClock()
    held = HeldBackend(clock)
    cache = ResponseCache(
        held,
        clock=clock,
        metrics=Metrics(CollectorRegistry()),
        observer=NullObserver(),
        fresh_seconds=0,
        stale_seconds=60,
        max_entry_bytes=1 << 20,
    )
    key = CacheKey(REALM, "a" * 64)
    store = asyncio.create_task(cache.store(key, 200, [], b'{"x":1}', request_cache_control=None))
    await held.entered.wait()
    lookup = asyncio.create_task(cache.lookup(key))
    other = await cache.lookup(CacheKey(REALM, "b" * 64))  # another key does not wait
    assert other.entry is None and not lookup.done()
    held.release.set()
    assert await store
    found = await lookup
    assert found.entry is not None and found.entry.body == b'{"x":1}'
