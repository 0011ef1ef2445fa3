"""The in-process home of one realm's (or the fleet's) buckets: a fixed ring, compact arrays.

A day of minute buckets for 10,000 realms must fit in a sidecar, so the counters nearly
every busy minute has (`DENSE_FIELDS`) live in flat `array`s, one slot per bucket, reused
when the ring comes round (that is what drops history older than the window). A realm's
slots are 16-bit and saturate (QBO allows 500 requests a minute, far below 65,535); the
fleet's ring is 64-bit. The rare counters (breaker, tokens, downtime, incident times) go in
a small dict beside it. Written here rather than with a library: nothing kept on PyPI
offers a fixed-size, typed, time-indexed ring cheaper than `array`.
"""

from __future__ import annotations

from array import array

from qbo_gateway.health.buckets import DENSE_FIELDS, Counts, Series

_INDEX = {name: i for i, name in enumerate(DENSE_FIELDS)}
_WIDTH = len(DENSE_FIELDS)


class BucketRing:
    """`slots` buckets; `add` and `read` by bucket number."""

    def __init__(self, slots: int, *, wide: bool = False) -> None:
        self.slots = slots
        self._cap = 2**63 - 1 if wide else 65535
        self._numbers = array("I", bytes(4 * slots))  # which bucket each slot holds
        self._dense = array("Q" if wide else "H", bytes((8 if wide else 2) * slots * _WIDTH))
        self._lat_ms = array("Q" if wide else "I", bytes((8 if wide else 4) * slots))
        self._rare: dict[int, Counts] = {}

    def nbytes(self) -> int:
        """Bytes held by the arrays (the rare dict aside)."""
        return sum(a.itemsize * len(a) + 64 for a in (self._numbers, self._dense, self._lat_ms))

    def add(self, bucket: int, counts: Counts) -> None:
        slot = bucket % self.slots
        held = self._numbers[slot]
        if held != bucket:
            if held > bucket:
                return  # older than the ring reaches: already out of the window
            self._clear(slot, held)
            self._numbers[slot] = bucket
        base = slot * _WIDTH
        rare: Counts | None = None
        for name, n in counts.items():
            i = _INDEX.get(name)
            if i is not None:
                self._dense[base + i] = min(self._cap, self._dense[base + i] + n)
            elif name == "lat_ms":
                self._lat_ms[slot] = min(self._cap * 65536, self._lat_ms[slot] + n)
            else:
                if rare is None:
                    rare = self._rare.setdefault(bucket, {})
                rare[name] = rare.get(name, 0) + n

    def _clear(self, slot: int, held: int) -> None:
        base = slot * _WIDTH
        for i in range(_WIDTH):
            self._dense[base + i] = 0
        self._lat_ms[slot] = 0
        self._rare.pop(held, None)

    def read(self, first: int, last: int) -> Series:
        """Buckets first..last (inclusive) that hold anything."""
        out: Series = {}
        for bucket in range(max(first, last - self.slots + 1), last + 1):
            slot = bucket % self.slots
            if self._numbers[slot] != bucket:
                continue
            base = slot * _WIDTH
            counts = {
                name: n
                for name, n in zip(DENSE_FIELDS, self._dense[base : base + _WIDTH], strict=True)
                if n
            }
            if self._lat_ms[slot]:
                counts["lat_ms"] = self._lat_ms[slot]
            counts.update(self._rare.get(bucket, {}))
            if counts:
                out[bucket] = counts
        return out
