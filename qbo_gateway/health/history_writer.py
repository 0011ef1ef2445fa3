"""Buffered history writes, so observing a request never waits on (or fails with) the store.

Bucket counters are added up in memory (one dict increment per event) and recent events
appended to a bounded buffer; a background task writes both after the reply, at most one
batch per `WRITE_PACE` (1 s): every realm's buckets, the fleet's and the recent events in
one pipeline in Redis mode (`HealthStore.write_batch`). When the writer falls
far behind, recent events are dropped while the counters keep counting. Workers stop
through `cancel_when_idle`: they finish the write in hand first, because cancelling
redis-py in the middle of a command can leave the connection (and with it the shutdown)
waiting for a long time.
"""

from __future__ import annotations

import contextlib

import structlog

from qbo_gateway.clock import Clock
from qbo_gateway.health.buckets import Counts, Series, bucket_of, spread
from qbo_gateway.health.store_memory import HealthStore, HistoryEntry
from qbo_gateway.logs import failure
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.workers import DrainWorker

log = structlog.get_logger(__name__)

_MAX_BUFFERED = 20000
WRITE_PACE = 1.0  # seconds between batches: what a kill -9 may lose of the history
_MAX_PER_REALM_FLUSH = 50


class HistoryBuffer:
    """The history writer: `add` is sync and O(1); a background task stores batches."""

    def __init__(
        self, *, store: HealthStore, clock: Clock, bucket_seconds: float, pace: float = WRITE_PACE
    ) -> None:
        self.store = store
        self.clock = clock
        self.bucket_seconds = bucket_seconds
        self._buffer: dict[str, list[HistoryEntry]] = {}
        self._buffered = 0
        self._counts: dict[str, Series] = {}
        self._worker = DrainWorker(
            has_work=lambda: bool(self._buffer or self._counts),
            step=self.flush_now,
            on_error=_write_failed,
            pace=pace,
        )

    def count(self, realm_id: str, at: float, counts: Counts) -> None:
        """Add counters into the realm's bucket of `at` (written by the background task)."""
        series = self._counts.get(realm_id)
        if series is None:
            series = self._counts[realm_id] = {}
        bucket = series.setdefault(bucket_of(at, self.bucket_seconds), {})
        for name, n in counts.items():
            bucket[name] = bucket.get(name, 0) + n
        self._worker.wake()

    def count_span(self, realm_id: str, start: float, end: float, name: str) -> None:
        """Add the milliseconds of [start, end) to `name` in each bucket the span touches."""
        width = self.bucket_seconds
        for bucket, ms in spread(start, end, width):
            if ms:
                self.count(realm_id, bucket * width, {name: ms})

    def add(self, realm_id: str, entry: HistoryEntry) -> None:
        if self._buffered >= _MAX_BUFFERED:
            return  # the writer is far behind; aggregates still count, history skips
        items = self._buffer.setdefault(realm_id, [])
        if len(items) >= _MAX_PER_REALM_FLUSH:
            items.pop(0)
            self._buffered -= 1
        items.append(entry)
        self._buffered += 1
        self._worker.wake()

    async def flush_now(self) -> None:
        """Write every realm's counters and recent events of this tick as one batch."""
        counts, self._counts = self._counts, {}
        batch, self._buffer, self._buffered = self._buffer, {}, 0
        if not counts and not batch:
            return
        try:
            await self.store.write_batch(counts, _fleet(counts), batch, now=self.clock.now())
        except StateUnavailable:
            log.warning("health_history_write_skipped", realms=len(counts) + len(batch))

    def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        """Let the write in hand finish, stop the writer, then store what is left."""
        await self._worker.stop()
        with contextlib.suppress(Exception):
            await self.flush_now()

    async def flush(self) -> None:
        """Wait until buffered entries are stored (written here if no writer runs)."""
        if self._worker.running:
            await self._worker.drained()
        else:
            await self.flush_now()


def _fleet(realms: dict[str, Series]) -> Series:
    """The fleet's share of a batch: every realm's counters summed per bucket."""
    fleet: Series = {}
    for series in realms.values():
        for bucket, counts in series.items():
            into = fleet.setdefault(bucket, {})
            for name, n in counts.items():
                into[name] = into.get(name, 0) + n
    return fleet


def _write_failed(exc: Exception) -> None:
    log.error("health_history_write_failed", **failure(exc))
