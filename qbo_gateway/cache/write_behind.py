"""Stored reads written after the reply, in batches: the cache's write-behind queue.

In Redis mode each stored read was one SET, awaited after the reply but before the
connection could take its next request. `WriteBehindCache` answers `put` at once: the
entry joins a small queue, bounded in entries and bytes, that a background worker writes
as one `put_many` (one Redis pipeline) a tick (`interval`) after the first store joined
it, or sooner once `batch` entries wait. A key stored twice in a tick is written once.
What it guarantees:

- A lookup of a queued key is answered from the queue, with the realm's epoch read from
  the home as usual, so this replica finds what it has just answered.
- A write's end of freshness is never queued: it goes to the home at once, before the
  write's reply. A queued entry carries the epoch it was read under, so whenever it lands
  it is stale after that write: epochs order them, not the queue.
- A delete drops a queued store of its key, and waits for one already on its way, so a
  deleted entity's read is never written back after it.
- A full queue drops its oldest store (counted as `cache_events{event="queue_drop"}`); a
  dropped store only costs a later miss. Nothing else is ever dropped.
- `close` writes what is queued. The home behind it is the `FallbackCache`, so while Redis
  is down a batch lands in the in-process home, as a single store did.

A kill -9 loses at most the queue: stored reads of the last tick, which the next miss of
each stores again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import dataclass, replace

import structlog

from qbo_gateway.cache.records import CacheBackend, CachedEntry, PendingStore
from qbo_gateway.clock import Clock
from qbo_gateway.logs import failure
from qbo_gateway.metrics import Metrics
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.workers import DrainWorker

log = structlog.get_logger(__name__)

_Slot = tuple[str, str]  # (realm_id, key_hash)
# What an entry costs the queue beyond its body and headers (the entry, its slot, the
# queue's own bookkeeping): a bound on bytes held, not an exact count.
_OVERHEAD = 400


@dataclass(frozen=True)
class QueueBounds:
    """How the queue is flushed and how much it may hold."""

    interval: float = 0.1  # seconds between batches
    batch: int = 64  # a batch goes out at once when this many entries wait
    max_entries: int = 2048
    max_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class _Queued:
    entry: CachedEntry
    ttl: float
    queued_at: float
    size: int


def queued_size(entry: CachedEntry) -> int:
    return len(entry.body) + sum(len(k) + len(v) for k, v in entry.headers) + _OVERHEAD


class WriteBehindCache:
    """`CacheBackend` over another home whose stores are queued and written in batches."""

    def __init__(
        self,
        home: CacheBackend,
        *,
        clock: Clock,
        metrics: Metrics,
        bounds: QueueBounds | None = None,
    ) -> None:
        self.home = home
        self._bounds = bounds or QueueBounds()
        self._clock = clock
        self._queue: OrderedDict[_Slot, _Queued] = OrderedDict()
        self._flying: dict[_Slot, _Queued] = {}
        self._landed = asyncio.Event()  # set while no batch is on its way
        self._landed.set()
        self._bytes = 0
        self._dropped = metrics.cache_events.labels(event="queue_drop")
        self._worker = DrainWorker(
            has_work=lambda: bool(self._queue),
            step=self.flush_now,
            on_error=_flush_failed,
            pace=self._bounds.interval,
            linger=True,
        )

    @property
    def bounds(self) -> QueueBounds:
        return self._bounds

    @bounds.setter
    def bounds(self, bounds: QueueBounds) -> None:
        self._bounds = bounds
        self._worker.pace = bounds.interval

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    async def get(self, realm_id: str, key_hash: str) -> tuple[CachedEntry | None, int]:
        slot = (realm_id, key_hash)
        try:
            entry, epoch = await self.home.get(realm_id, key_hash)
        except (StateUnavailable, ValueError):
            if self._waiting(slot) is None:
                raise
            # What the home holds is unreadable, but this replica's newer store is here.
            entry, epoch = None, await self.home.epoch(realm_id)
        waiting = self._waiting(slot)  # looked at after the await: the newest store wins
        if waiting is not None:
            return replace(waiting.entry, realm_epoch=epoch), epoch
        return entry, epoch

    def _waiting(self, slot: _Slot) -> _Queued | None:
        found = self._queue.get(slot) or self._flying.get(slot)
        if found is None or self._clock.now() - found.queued_at >= found.ttl:
            return None  # past its TTL: Redis would have let it expire too
        return found

    async def put(self, realm_id: str, key_hash: str, entry: CachedEntry, *, ttl: float) -> bool:
        size = queued_size(entry)
        if ttl <= 0 or size > self.bounds.max_bytes:
            return False
        slot = (realm_id, key_hash)
        old = self._queue.pop(slot, None)
        if old is not None:
            self._bytes -= old.size
        self._queue[slot] = _Queued(entry, ttl, self._clock.now(), size)
        self._bytes += size
        while len(self._queue) > self.bounds.max_entries or self._bytes > self.bounds.max_bytes:
            _, dropped = self._queue.popitem(last=False)
            self._bytes -= dropped.size
            self._dropped.inc()
        self._worker.start()
        self._worker.wake()
        if len(self._queue) >= self.bounds.batch:
            self._worker.hurry()
        return True

    async def flush_now(self) -> None:
        """Write everything queued as one batch (the worker's step; also used by close)."""
        if not self._queue:
            return
        self._flying, self._queue, self._bytes = dict(self._queue), OrderedDict(), 0
        self._landed.clear()
        now = self._clock.now()
        stores = [
            PendingStore(realm_id, key_hash, item.entry, item.ttl - (now - item.queued_at))
            for (realm_id, key_hash), item in self._flying.items()
            if item.ttl - (now - item.queued_at) > 0
        ]
        try:
            await self.home.put_many(stores)
        except StateUnavailable as exc:
            # The home has no fallback (a bare Redis home): these reads go unstored.
            log.warning("cache_batch_unstored", entries=len(stores), **failure(exc))
        finally:
            self._flying = {}
            self._landed.set()

    async def delete(self, realm_id: str, key_hash: str) -> None:
        """Forget the entry: a queued store of it is dropped, one on its way lands first."""
        slot = (realm_id, key_hash)
        old = self._queue.pop(slot, None)
        if old is not None:
            self._bytes -= old.size
        if slot in self._flying:
            await self._landed.wait()
        await self.home.delete(realm_id, key_hash)

    async def epoch(self, realm_id: str) -> int:
        return await self.home.epoch(realm_id)

    async def end_freshness(self, realm_id: str) -> int:
        return await self.home.end_freshness(realm_id)

    async def put_many(self, stores: list[PendingStore]) -> None:
        for store in stores:
            await self.put(store.realm_id, store.key_hash, store.entry, ttl=store.ttl)

    async def close(self) -> None:
        """Write what is queued, then close the home."""
        await self._worker.stop()
        with contextlib.suppress(StateUnavailable):
            await self.flush_now()
        await self.home.close()


def _flush_failed(exc: Exception) -> None:
    log.error("cache_batch_failed", **failure(exc))
