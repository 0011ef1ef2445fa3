"""The meter's home in embedded mode: this process's counters, one dict per month."""

from __future__ import annotations

from collections import Counter

from qbo_gateway.economy.records import TOTAL


class MemoryMeterBackend:
    def __init__(self, *, keep_months: int = 3) -> None:
        self._months: dict[str, Counter[str]] = {}
        self._keep = keep_months

    async def add(self, month: str, fields: dict[str, int]) -> int:
        counts = self._months.get(month)
        if counts is None:
            counts = self._months[month] = Counter()
            for old in sorted(self._months)[: -self._keep]:
                del self._months[old]
        counts.update(fields)
        return counts[TOTAL]

    async def read(self, month: str) -> dict[str, int]:
        return dict(self._months.get(month, {}))

    async def count(self, month: str, name: str) -> int:
        return self._months.get(month, Counter())[name]

    async def close(self) -> None:
        return None
