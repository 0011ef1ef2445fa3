"""The fleet's buckets for the dashboard and the status page, re-read only where they change.

A day is 1,440 buckets; reading them all from Redis on every dashboard costs more than
the dashboard's whole budget. Buckets only change near `now` (every replica adds into the
current minute) and when an outage is resolved (its downtime is spread over the past
buckets it spans), so this keeps the day in memory, re-reads the newest few buckets on
each call, and the whole day when an outage was resolved here, when the copy is older than
`refresh_seconds` (outages resolved by other replicas), or after a store error.
"""

from __future__ import annotations

from qbo_gateway.clock import Clock
from qbo_gateway.health.buckets import Series
from qbo_gateway.health.incident_times import IncidentTimes
from qbo_gateway.health.sla import Window
from qbo_gateway.health.store_memory import HealthStore
from qbo_gateway.state.errors import StateUnavailable

_RECENT = 3  # buckets re-read on every call: the current one and the two before it


class FleetHistory:
    def __init__(
        self,
        *,
        store: HealthStore,
        clock: Clock,
        incidents: IncidentTimes,
        history_seconds: float,
        bucket_seconds: float,
        refresh_seconds: float = 60.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._incidents = incidents
        self._history = history_seconds
        self._width = bucket_seconds
        self._refresh = refresh_seconds
        self._series: Series = {}
        self._read_at: float | None = None
        self._resolved_seen = -1

    async def read(self) -> tuple[Series, Window]:
        now = self._clock.now()
        window = Window.ending(now, history=self._history, width=self._width)
        try:
            if self._stale(now):
                self._series = await self._store.fleet_series(first=window.first, last=window.last)
                self._read_at, self._resolved_seen = now, self._incidents.resolved_count
            else:
                first = max(window.first, window.last - _RECENT + 1)
                fresh = await self._store.fleet_series(first=first, last=window.last)
                for bucket in [b for b in self._series if b >= first or b < window.first]:
                    del self._series[bucket]
                self._series.update(fresh)
        except StateUnavailable:
            self._read_at = None
            return {}, window
        return self._series, window

    def _stale(self, now: float) -> bool:
        return (
            self._read_at is None
            or now - self._read_at >= self._refresh
            or now < self._read_at
            or self._incidents.resolved_count != self._resolved_seen
        )
