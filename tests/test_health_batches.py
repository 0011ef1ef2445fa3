"""The history writer's batches: every realm's counters and events of a tick in one write.

A `HistoryBuffer` over the in-process store whose `write_batch` calls are recorded (the
Redis store turns each into one pipeline: the shared store suite in test_health.py). The
pace is an hour, so "no second batch yet" is the pace at work; `flush` and `stop` write.
"""

from __future__ import annotations

import asyncio

from qbo_gateway.clock import ManualClock
from qbo_gateway.health.buckets import Series
from qbo_gateway.health.history_writer import HistoryBuffer
from qbo_gateway.health.store_memory import HistoryEntry, MemoryHealthStore


class Recorded(MemoryHealthStore):
    def __init__(self) -> None:
        super().__init__(history_seconds=3600.0, bucket_seconds=60.0)
        self.batches: list[tuple[list[str], list[str]]] = []

    async def write_batch(
        self,
        realms: dict[str, Series],
        fleet: Series,
        entries: dict[str, list[HistoryEntry]],
        *,
        now: float,
    ) -> None:
        self.batches.append((sorted(realms), sorted(entries)))
        await super().write_batch(realms, fleet, entries, now=now)


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_a_tick_of_many_realms_is_one_batch() -> None:
    clock = ManualClock()
    store = Recorded()
    buffer = HistoryBuffer(store=store, clock=clock, bucket_seconds=60.0, pace=3600.0)
    buffer.start()
    now = clock.now()
    try:
        for realm in ("1", "2", "3"):
            for _ in range(10):
                buffer.count(realm, now, {"requests": 1})
        buffer.add("2", HistoryEntry(now, "request", False, 503))
        await settle()
        assert store.batches == [(["1", "2", "3"], ["2"])]
        for realm in ("1", "4"):
            buffer.count(realm, now, {"requests": 1, "errors": 1})
        buffer.add("4", HistoryEntry(now, "request", False, 503))
        await settle()
        assert len(store.batches) == 1  # the pace holds the second tick's counts
        await buffer.flush()
        assert store.batches[1] == (["1", "4"], ["4"])
        bucket = int(now // 60)
        assert await store.realm_series("1", first=bucket, last=bucket) == {
            bucket: {"requests": 11, "errors": 1}
        }
        assert await store.fleet_series(first=bucket, last=bucket) == {
            bucket: {"requests": 32, "errors": 2}
        }
        buffer.count("5", now, {"requests": 1})
    finally:
        await buffer.stop()
    assert store.batches[2] == (["5"], [])  # stopping writes what the pace held back
