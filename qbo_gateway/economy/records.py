"""What is metered, the calendar month it counts in, and the interface every meter home keeps.

Intuit classes each Accounting API call as Core (data in: create, update, delete; free) or
CorePlus (data out: reads, queries, reports, CDC, companyinfo; metered per app and calendar
month). OAuth calls never pass here, so they are never counted. A month's counts live in
one home: this process (embedded mode) or one Redis hash per month shared by every replica.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo

from qbo_gateway.proxy.paths import is_read
from qbo_gateway.state.errors import StateUnavailable

__all__ = [
    "MeterBackend",
    "MonthSpan",
    "StateUnavailable",
    "entity_of",
    "is_coreplus",
    "month_of",
    "zone_named",
]

TOTAL = "total"  # CorePlus calls of the month, every source
CORE = "core"  # Core calls of the month (unmetered; counted to show the mix)
PROBE = "s:probe"  # CorePlus calls the gateway's own monitor made
REALM_PREFIX = "r:"
CALLER_PREFIX = "c:"
ENTITY_PREFIX = "e:"

# An entity name is the first path segment after the realm (`customer`, `query`, `reports`);
# anything else a caller invents is counted as `other`, so the hash stays bounded.
_ENTITY = re.compile(r"^[A-Za-z]{1,40}$")


def is_coreplus(method: str, rest: str) -> bool:
    """A metered call: a read (GET, or a POST query). `/batch` is counted as Core."""
    return is_read(method, rest)


def entity_of(rest: str) -> str:
    """The entity (or endpoint) a call addresses, lower case, bounded."""
    first = rest.split("?", 1)[0].split("/", 1)[0]
    return first.lower() if _ENTITY.match(first) else "other"


@dataclass(frozen=True)
class MonthSpan:
    """One calendar month in the metering time zone: its label and epoch-second bounds."""

    label: str  # "2026-11"
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def zone_named(name: str) -> tzinfo:
    """The metering time zone; UTC needs no time zone database (slim images lack one)."""
    return UTC if name.upper() == "UTC" else ZoneInfo(name)


def month_of(now: float, zone: tzinfo) -> MonthSpan:
    local = datetime.fromtimestamp(now, zone)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    # Day 28 + 4 days is always in the next month; its first day is this month's end.
    following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return MonthSpan(
        f"{start.year:04d}-{start.month:02d}", start.timestamp(), following.timestamp()
    )


class MeterBackend(Protocol):
    """Keeps a month's counters. Every method may raise `StateUnavailable` (Redis down)."""

    async def add(self, month: str, fields: dict[str, int]) -> int:
        """Add `fields` to the month's counters; the month's new `total`."""
        ...

    async def read(self, month: str) -> dict[str, int]:
        """Every counter of the month (empty before the first call)."""
        ...

    async def count(self, month: str, name: str) -> int:
        """One counter of the month (0 before its first call): the probe budget's read."""
        ...

    async def close(self) -> None: ...
