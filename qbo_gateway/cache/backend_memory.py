"""The embedded-mode cache home: an in-process LRU bounded by bytes.

Reads can be large (a report, a query of thousands of rows), so the bound is on bytes held
(QBO_CACHE_MAX_BYTES), not on entry count: the gateway's memory stays predictable however
the traffic looks. Least recently used entries are evicted first; an entry that alone is
larger than the bound is never stored.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from qbo_gateway.cache.records import CachedEntry
from qbo_gateway.clock import Clock
from qbo_gateway.metrics import Metrics

_Slot = tuple[str, str]  # (realm_id, key_hash): the realm is part of the key itself


class MemoryCacheBackend:
    def __init__(self, *, max_bytes: int, clock: Clock, metrics: Metrics | None = None) -> None:
        self._max_bytes = max_bytes
        self._clock = clock
        self._metrics = metrics
        self._entries: OrderedDict[_Slot, tuple[CachedEntry, float, int]] = OrderedDict()
        self._epochs: dict[str, int] = {}
        self._bytes = 0

    @property
    def bytes_held(self) -> int:
        return self._bytes

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
            self._remove(slot)
            self._publish()
            return None, epoch
        self._entries.move_to_end(slot)
        return replace(entry, realm_epoch=epoch), epoch

    async def put(self, realm_id: str, key_hash: str, entry: CachedEntry, *, ttl: float) -> bool:
        slot = (realm_id, key_hash)
        size = entry.size + len(key_hash)
        if size > self._max_bytes or ttl <= 0:
            return False
        if slot in self._entries:
            self._remove(slot)
        self._entries[slot] = (entry, self._clock.now() + ttl, size)
        self._bytes += size
        while self._bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            if self._metrics is not None:
                self._metrics.cache_events.labels(event="evict").inc()
        self._publish()
        return True

    async def epoch(self, realm_id: str) -> int:
        return self._epochs.get(realm_id, 0)

    async def end_freshness(self, realm_id: str) -> int:
        self._epochs[realm_id] = self._epochs.get(realm_id, 0) + 1
        return self._epochs[realm_id]

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0
        self._publish()

    def _remove(self, slot: _Slot) -> None:
        _, _, size = self._entries.pop(slot)
        self._bytes -= size

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.cache_bytes.set(self._bytes)
