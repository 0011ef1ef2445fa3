"""The cache home used in Redis mode: Redis while it answers, in-process while it does not.

A hung Redis (a stopped process, a partition that drops packets) makes every Redis call
wait out its socket timeout. Without this wrapper each storable read and each write paid
that wait even after the gateway knew Redis was down. While `BackendAvailability` says
down, every call goes to a bounded in-process LRU at once; the availability probe brings
the shared cache back. This is the cache counterpart of admission's and health's fallbacks.

A write seen while Redis was down ends the freshness of that realm only in the local home;
the first call to Redis after it is back ends it there too, so a read stored in Redis
before the write is never served as fresh afterwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from qbo_gateway.cache.records import CacheBackend, CachedEntry, PendingStore
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.errors import StateUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Realms written during one outage whose shared epoch must still be advanced. Past this,
# further realms are forgotten (logged): fresh reads of them may be served once more.
_MAX_PENDING_REALMS = 10_000


class FallbackCache:
    """`CacheBackend`: `primary` (Redis) while reachable, else `fallback` (in-process)."""

    def __init__(
        self,
        primary: CacheBackend,
        fallback: CacheBackend,
        *,
        availability: BackendAvailability,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._availability = availability
        self._written_while_down: set[str] = set()

    async def _either(
        self, primary: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]
    ) -> T:
        if self._availability.up:
            try:
                if self._written_while_down:
                    await self._catch_up()
                result = await primary()
            except StateUnavailable as exc:
                self._availability.mark_down(exc.__cause__ or exc)
            else:
                self._availability.mark_up()
                return result
        return await fallback()

    async def _catch_up(self) -> None:
        """Advance the shared epoch of every realm written while Redis was down."""
        while self._written_while_down:
            realm_id = next(iter(self._written_while_down))
            await self._primary.end_freshness(realm_id)
            self._written_while_down.discard(realm_id)

    async def get(self, realm_id: str, key_hash: str) -> tuple[CachedEntry | None, int]:
        return await self._either(
            lambda: self._primary.get(realm_id, key_hash),
            lambda: self._fallback.get(realm_id, key_hash),
        )

    async def put(self, realm_id: str, key_hash: str, entry: CachedEntry, *, ttl: float) -> bool:
        return await self._either(
            lambda: self._primary.put(realm_id, key_hash, entry, ttl=ttl),
            lambda: self._fallback.put(realm_id, key_hash, entry, ttl=ttl),
        )

    async def delete(self, realm_id: str, key_hash: str) -> None:
        await self._either(
            lambda: self._primary.delete(realm_id, key_hash),
            lambda: self._fallback.delete(realm_id, key_hash),
        )

    async def put_many(self, stores: list[PendingStore]) -> None:
        await self._either(
            lambda: self._primary.put_many(stores), lambda: self._fallback.put_many(stores)
        )

    async def epoch(self, realm_id: str) -> int:
        return await self._either(
            lambda: self._primary.epoch(realm_id), lambda: self._fallback.epoch(realm_id)
        )

    async def end_freshness(self, realm_id: str) -> int:
        async def locally() -> int:
            if len(self._written_while_down) < _MAX_PENDING_REALMS:
                self._written_while_down.add(realm_id)
            else:
                log.warning("cache_epoch_catch_up_full", realm_id=realm_id)
            return await self._fallback.end_freshness(realm_id)

        async def shared() -> int:
            # The local home may hold reads stored during an outage: end those too.
            await self._fallback.end_freshness(realm_id)
            return await self._primary.end_freshness(realm_id)

        return await self._either(shared, locally)

    async def close(self) -> None:
        await self._primary.close()
        await self._fallback.close()
