"""The health store used in Redis mode: Redis while it answers, in-process while it does not.

Health must keep working through a Redis outage: history and alerts recorded then stay
local to this replica (and probes are no longer shared out) until Redis is back. This is
the health counterpart of `admission_fallback`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from qbo_gateway.health.buckets import Series
from qbo_gateway.health.store_memory import (
    AlertRecord,
    HealthStore,
    HistoryEntry,
    LeaseResult,
    MemoryHealthStore,
    UpsertResult,
)
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.errors import StateUnavailable

T = TypeVar("T")


class FallbackHealthStore:
    """Redis while it answers, the in-process store while it does not.

    Health must keep working through a Redis outage: history and alerts recorded then stay
    local to this replica (and probes are no longer shared out) until Redis is back.
    """

    def __init__(
        self,
        primary: HealthStore,
        fallback: MemoryHealthStore,
        *,
        availability: BackendAvailability | None = None,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._availability = availability

    async def _either(
        self, primary: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]
    ) -> T:
        if self._availability is not None and not self._availability.up:
            return await fallback()
        try:
            result = await primary()
        except StateUnavailable as exc:
            if self._availability is not None:
                self._availability.mark_down(exc)
            return await fallback()
        return result

    async def record(self, entries: dict[str, list[HistoryEntry]], *, now: float) -> None:
        await self._either(
            lambda: self._primary.record(entries, now=now),
            lambda: self._fallback.record(entries, now=now),
        )

    async def history(self, realm_id: str, *, since: float, limit: int) -> list[HistoryEntry]:
        return await self._either(
            lambda: self._primary.history(realm_id, since=since, limit=limit),
            lambda: self._fallback.history(realm_id, since=since, limit=limit),
        )

    async def add_counts(self, realms: dict[str, Series], fleet: Series, *, now: float) -> None:
        await self._either(
            lambda: self._primary.add_counts(realms, fleet, now=now),
            lambda: self._fallback.add_counts(realms, fleet, now=now),
        )

    async def write_batch(
        self,
        realms: dict[str, Series],
        fleet: Series,
        entries: dict[str, list[HistoryEntry]],
        *,
        now: float,
    ) -> None:
        await self._either(
            lambda: self._primary.write_batch(realms, fleet, entries, now=now),
            lambda: self._fallback.write_batch(realms, fleet, entries, now=now),
        )

    async def realm_series(self, realm_id: str, *, first: int, last: int) -> Series:
        return await self._either(
            lambda: self._primary.realm_series(realm_id, first=first, last=last),
            lambda: self._fallback.realm_series(realm_id, first=first, last=last),
        )

    async def fleet_series(self, *, first: int, last: int) -> Series:
        return await self._either(
            lambda: self._primary.fleet_series(first=first, last=last),
            lambda: self._fallback.fleet_series(first=first, last=last),
        )

    async def acquire_probe(
        self, realm_id: str, *, owner: str, now: float, interval: float
    ) -> LeaseResult:
        return await self._either(
            lambda: self._primary.acquire_probe(realm_id, owner=owner, now=now, interval=interval),
            lambda: self._fallback.acquire_probe(realm_id, owner=owner, now=now, interval=interval),
        )

    async def upsert_alert(self, alert: AlertRecord) -> UpsertResult:
        return await self._either(
            lambda: self._primary.upsert_alert(alert),
            lambda: self._fallback.upsert_alert(alert),
        )

    async def resolve_alert(self, realm_id: str, kind: str, *, at: float) -> AlertRecord | None:
        return await self._either(
            lambda: self._primary.resolve_alert(realm_id, kind, at=at),
            lambda: self._fallback.resolve_alert(realm_id, kind, at=at),
        )

    async def ack_alert(self, alert_id: str, *, at: float, by: str) -> AlertRecord | None:
        async def primary() -> AlertRecord | None:
            found = await self._primary.ack_alert(alert_id, at=at, by=by)
            # An alert raised during an outage lives only in the fallback.
            return found or await self._fallback.ack_alert(alert_id, at=at, by=by)

        return await self._either(primary, lambda: self._fallback.ack_alert(alert_id, at=at, by=by))

    async def alerts(self) -> list[AlertRecord]:
        async def primary() -> list[AlertRecord]:
            shared = await self._primary.alerts()
            local = await self._fallback.alerts()
            if not local:
                return shared
            seen = {a.id for a in shared}
            return shared + [a for a in local if a.id not in seen]

        return await self._either(primary, self._fallback.alerts)

    async def prune(self, *, resolved_before: float, keep_resolved: int) -> int:
        local = await self._fallback.prune(
            resolved_before=resolved_before, keep_resolved=keep_resolved
        )
        shared = await self._either(
            lambda: self._primary.prune(
                resolved_before=resolved_before, keep_resolved=keep_resolved
            ),
            _zero,
        )
        return local + shared

    async def close(self) -> None:
        await self._primary.close()
        await self._fallback.close()


async def _zero() -> int:
    return 0
