"""The shared cache home for replicas: stored reads as Redis values that expire.

A read stored by one replica serves degraded mode on every replica. Stores arrive in
batches (`put_many`, one pipeline) from the write-behind queue in front of this home.
Each entry lives as long as it may be served stale (its TTL), so Redis itself bounds the
data kept. A write
ends the freshness of a realm's reads with one INCR of the realm's epoch, read together
with the entry in one MGET (same hash tag, so it also works in Redis Cluster). Redis errors
become `StateUnavailable`: the cache answers a miss and the request goes on.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from dataclasses import replace
from typing import TypeVar

from redis.exceptions import RedisError

from qbo_gateway.cache.records import CachedEntry, CorruptEntry, PendingStore
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import REDIS_DOWN_ERRORS, RedisClient

T = TypeVar("T")

# Any Redis error (down, slow, or a refused command) means "no cache now", never a failure.
_CACHE_ERRORS: tuple[type[BaseException], ...] = (*REDIS_DOWN_ERRORS, RedisError)


class RedisCacheBackend:
    def __init__(self, redis: RedisClient, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except _CACHE_ERRORS as exc:
            raise StateUnavailable(f"redis cache unavailable: {type(exc).__name__}") from exc

    async def get(self, realm_id: str, key_hash: str) -> tuple[CachedEntry | None, int]:
        raw_entry, raw_epoch = await self._call(
            self._redis.mget(
                [self._keys.cache_entry(realm_id, key_hash), self._keys.cache_fresh_epoch(realm_id)]
            )
        )
        epoch = int(raw_epoch) if raw_epoch is not None else 0
        if not isinstance(raw_entry, bytes):
            return None, epoch
        entry = CachedEntry.decode(raw_entry)
        if entry.realm_id != realm_id:
            # The key is realm-scoped, so this cannot happen unless something else wrote it.
            raise CorruptEntry("entry belongs to another realm")
        return replace(entry, realm_epoch=epoch), epoch

    async def put(self, realm_id: str, key_hash: str, entry: CachedEntry, *, ttl: float) -> bool:
        if ttl <= 0:
            return False
        await self._call(
            self._redis.set(
                self._keys.cache_entry(realm_id, key_hash),
                entry.encode(),
                px=max(1, math.ceil(ttl * 1000)),
            )
        )
        return True

    async def delete(self, realm_id: str, key_hash: str) -> None:
        await self._call(self._redis.delete(self._keys.cache_entry(realm_id, key_hash)))

    async def put_many(self, stores: list[PendingStore]) -> None:
        kept = [s for s in stores if s.ttl > 0]
        if not kept:
            return
        # One pipeline, not a transaction: on Redis Cluster it is split by node.
        pipe = self._redis.pipeline(transaction=False)
        for store in kept:
            pipe.set(
                self._keys.cache_entry(store.realm_id, store.key_hash),
                store.entry.encode(),
                px=max(1, math.ceil(store.ttl * 1000)),
            )
        await self._call(pipe.execute())

    async def epoch(self, realm_id: str) -> int:
        raw = await self._call(self._redis.get(self._keys.cache_fresh_epoch(realm_id)))
        return int(raw) if raw is not None else 0

    async def end_freshness(self, realm_id: str) -> int:
        # No TTL on the epoch: if it expired and restarted from 0, entries stored under an
        # old epoch number could look fresh again after a later write.
        return int(await self._call(self._redis.incr(self._keys.cache_fresh_epoch(realm_id))))

    async def close(self) -> None:
        # The Redis client is shared with the other Redis backends; its owner closes it.
        return None
