"""The embedded-mode cache home: an in-process LRU bounded by the memory its entries take.

Reads can be large (a report, a query of thousands of rows), so the bound is on bytes held
(QBO_CACHE_MAX_BYTES), not on entry count, and the bytes counted are what an entry really
costs this process: its body and headers as Python objects, the entry itself, its key and
the LRU's own bookkeeping (`entry_cost`), so the configured bound holds in resident memory.
Least recently used entries are evicted first (cachetools' `LRUCache`, sized by that cost);
an entry that alone is larger than the bound is never stored.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from cachetools import LRUCache

from qbo_gateway.cache.records import CachedEntry, PendingStore
from qbo_gateway.clock import Clock
from qbo_gateway.metrics import Metrics

_Slot = tuple[str, str]  # (realm_id, key_hash): the realm is part of the key itself
_Held = tuple[CachedEntry, float, int]  # entry, expires_at, cost

# What one more entry costs the LRU beyond the objects `entry_cost` sizes: a slot in the
# mapping, in the size table and in the order (measured with tracemalloc on CPython 3.11).
_BOOKKEEPING = 150


def entry_cost(key_hash: str, entry: CachedEntry) -> int:
    """Bytes one stored read takes in this process (CPython object sizes)."""
    size = sys.getsizeof(entry) + sys.getsizeof(entry.__dict__) + sys.getsizeof(entry.body)
    size += sys.getsizeof(entry.headers) + sys.getsizeof(entry.realm_id)
    for name, value in entry.headers:
        size += sys.getsizeof((name, value)) + sys.getsizeof(name) + sys.getsizeof(value)
    # The slot's tuple, the hash, and the held tuple with its float and int.
    size += sys.getsizeof(key_hash) + 56 + 64 + 24 + 28
    return size + _BOOKKEEPING


def _same_size(old: CachedEntry, new: CachedEntry) -> bool:
    """Whether `entry_cost` would give both the same figure (same lengths, same headers)."""
    return (
        len(old.body) == len(new.body)
        and old.headers == new.headers
        and (old.fresh_for is None) == (new.fresh_for is None)
        and len(old.realm_id) == len(new.realm_id)
    )


class _Entries(LRUCache[_Slot, _Held]):
    def __init__(self, max_bytes: int, metrics: Metrics | None) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=lambda held: held[2])
        self._metrics = metrics

    def popitem(self) -> tuple[_Slot, _Held]:
        evicted = super().popitem()
        if self._metrics is not None:
            self._metrics.cache_events.labels(event="evict").inc()
        return evicted


class MemoryCacheBackend:
    def __init__(self, *, max_bytes: int, clock: Clock, metrics: Metrics | None = None) -> None:
        self._max_bytes = max_bytes
        self._clock = clock
        self._metrics = metrics
        self._entries = _Entries(max_bytes, metrics)
        self._epochs: dict[str, int] = {}

    @property
    def bytes_held(self) -> int:
        return int(self._entries.currsize)

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, realm_id: str, key_hash: str) -> tuple[CachedEntry | None, int]:
        epoch = self._epochs.get(realm_id, 0)
        slot = (realm_id, key_hash)
        held = self._entries.get(slot)
        if held is None:
            return None, epoch
        entry, expires_at, _ = held
        if self._clock.now() >= expires_at:
            del self._entries[slot]
            self._publish()
            return None, epoch
        if entry.realm_epoch == epoch:  # no write since it was stored: no copy needed
            return entry, epoch
        return replace(entry, realm_epoch=epoch), epoch

    async def put(self, realm_id: str, key_hash: str, entry: CachedEntry, *, ttl: float) -> bool:
        held = self._entries.get((realm_id, key_hash))
        if held is not None and _same_size(held[0], entry):
            cost = held[2]  # the same read stored again (the usual case): same cost
        else:
            cost = entry_cost(key_hash, entry)
        if cost > self._max_bytes or ttl <= 0:
            return False
        self._entries[(realm_id, key_hash)] = (entry, self._clock.now() + ttl, cost)
        self._publish()
        return True

    async def delete(self, realm_id: str, key_hash: str) -> None:
        if self._entries.pop((realm_id, key_hash), None) is not None:
            self._publish()

    async def put_many(self, stores: list[PendingStore]) -> None:
        for store in stores:
            await self.put(store.realm_id, store.key_hash, store.entry, ttl=store.ttl)

    async def epoch(self, realm_id: str) -> int:
        return self._epochs.get(realm_id, 0)

    async def end_freshness(self, realm_id: str) -> int:
        self._epochs[realm_id] = self._epochs.get(realm_id, 0) + 1
        return self._epochs[realm_id]

    async def close(self) -> None:
        self._entries.clear()
        self._publish()

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.cache_bytes.set(self._entries.currsize)
