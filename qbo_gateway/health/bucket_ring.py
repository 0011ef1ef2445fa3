"""The in-process home of one realm's (or the fleet's) buckets: a ring of narrow columns.

A day of buckets for 10,000 realms must fit in a sidecar, and most realms use little of
it: one served once holds one bucket, one only probed holds five small counters a bucket.
So each counter the ring has seen is one flat `array` (a column, one slot per bucket),
created on its first non-zero value, as narrow as its largest value needs (one byte,
widened to 2, 4 or 8 when a value outgrows it), and the ring itself starts with a few
slots and doubles up to the window only when the buckets it holds span more. A slot is
reused when the ring comes round (that is what drops history older than the window).
A realm's counters saturate at 65,535 a bucket (QBO allows 500 requests a minute), its
millisecond sums (`*_ms`) at 2**32 - 65,536; the fleet's at 2**63 - 1. Per-incident times
(`det:<id>` and the like, one field per incident) stay in a small dict beside it. Written
here rather than with a library: nothing kept on PyPI offers a fixed-size, typed,
time-indexed ring cheaper than `array`.
"""

from __future__ import annotations

from array import array
from typing import Literal

from qbo_gateway.health.buckets import Counts, Series

_FIRST_SLOTS = 4  # a realm seen once keeps a ring this long
_INT_CODES: dict[str, Literal["B", "H", "I", "Q"]] = {"B": "B", "H": "H", "I": "I", "Q": "Q"}
_WIDER = {"B": "H", "H": "I", "I": "Q"}
_LIMIT = {"B": 255, "H": 65535, "I": 2**32 - 1, "Q": 2**64 - 1}
_COUNT_CAP = 65535
_MS_CAP = 65535 * 65536
_WIDE_CAP = 2**63 - 1


class BucketRing:
    """Buckets of the last `slots` bucket numbers; `add` and `read` by bucket number."""

    __slots__ = ("_columns", "_newest", "_rare", "_size", "_wide", "slots")

    def __init__(self, slots: int, *, wide: bool = False) -> None:
        self.slots = slots
        self._wide = wide
        self._size = min(slots, _FIRST_SLOTS)
        self._newest = -1  # the newest bucket number the ring reaches (-1: none yet)
        self._columns: dict[str, array[int]] = {}
        self._rare: dict[int, Counts] = {}

    def nbytes(self) -> int:
        """Bytes held by the columns and their dict (the per-incident dict aside)."""
        held = sum(a.itemsize * len(a) + 80 for a in self._columns.values())
        return held + 64 * (len(self._columns) + 1) + 72

    def _cap(self, name: str) -> int:
        if self._wide:
            return _WIDE_CAP
        return _MS_CAP if name.endswith("_ms") else _COUNT_CAP

    def add(self, bucket: int, counts: Counts) -> None:
        if bucket < 0:
            return
        if self._newest < 0:
            self._newest = bucket
        elif bucket > self._newest:
            self._advance(bucket)
        elif bucket <= self._newest - self.slots:
            return  # older than the window reaches
        elif bucket <= self._newest - self._size:
            self._resize(self._newest - bucket + 1)
        slot = bucket % self._size
        rare: Counts | None = None
        for name, n in counts.items():
            if ":" in name:  # an incident's time: present even when 0 ms (it counts)
                if rare is None:
                    rare = self._rare.setdefault(bucket, {})
                rare[name] = rare.get(name, 0) + n
                continue
            if not n:
                continue
            column = self._columns.get(name)
            if column is None:
                column = self._columns[name] = array("B", bytes(self._size))
            value = min(self._cap(name), column[slot] + n)
            if value > _LIMIT[column.typecode]:
                column = self._columns[name] = _widen(column, value)
            column[slot] = value

    def _advance(self, bucket: int) -> None:
        """Make `bucket` the newest: grow if what the window still holds would not fit,
        then clear the slots of the buckets skipped over."""
        if self._size < self.slots:
            oldest = self._oldest_held(bucket - self.slots + 1)
            if oldest is not None and bucket - oldest + 1 > self._size:
                self._resize(bucket - oldest + 1)
        gap = min(bucket - self._newest, self._size)
        for column in self._columns.values():
            for b in range(bucket - gap + 1, bucket + 1):
                column[b % self._size] = 0
        self._newest = bucket
        if self._rare:
            first = bucket - self._size + 1
            for old in [b for b in self._rare if b < first]:
                del self._rare[old]

    def _oldest_held(self, floor: int) -> int | None:
        """The oldest bucket at or after `floor` that holds anything."""
        for bucket in range(max(floor, self._newest - self._size + 1, 0), self._newest + 1):
            slot = bucket % self._size
            if bucket in self._rare or any(c[slot] for c in self._columns.values()):
                return bucket
        return None

    def _resize(self, need: int) -> None:
        size = self._size
        while size < need:
            size *= 2
        size = min(size, self.slots)
        if size == self._size:
            return
        first = self._newest - self._size + 1
        for name, column in self._columns.items():
            grown = array(column.typecode, bytes(column.itemsize * size))
            for b in range(max(first, 0), self._newest + 1):
                grown[b % size] = column[b % self._size]
            self._columns[name] = grown
        self._size = size

    def read(self, first: int, last: int) -> Series:
        """Buckets first..last (inclusive) that hold anything."""
        out: Series = {}
        if self._newest < 0:
            return out
        low = max(first, self._newest - self._size + 1, last - self.slots + 1, 0)
        for bucket in range(low, min(last, self._newest) + 1):
            slot = bucket % self._size
            counts = {name: c[slot] for name, c in self._columns.items() if c[slot]}
            counts.update(self._rare.get(bucket, {}))
            if counts:
                out[bucket] = counts
        return out


def _widen(column: array[int], value: int) -> array[int]:
    code: str = column.typecode
    while value > _LIMIT[code]:
        code = _WIDER[code]
    return array(_INT_CODES[code], column)
