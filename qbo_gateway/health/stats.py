"""The realm table: what this replica knows of each realm, with per-realm running figures.

Every event updates a `RealmStats` in O(1) (time buckets, bounded latency samples), so the
summary and dashboard read precomputed figures instead of scanning history, even at 10,000
realms. `RealmTable` is the one picture the event rules, token rules, probe cycle and
views all read and write; keeping it in one object is what lets them live in separate
modules without copies drifting apart.
"""

from __future__ import annotations

import math
from collections import deque

from qbo_gateway.admission.records import BreakerState
from qbo_gateway.clock import Clock
from qbo_gateway.tokens.records import TokenStatus

_SAMPLES_PER_REALM = 200
_GLOBAL_SAMPLES = 5000
_BUCKETS_PER_WINDOW = 96


class RealmStats:
    """One realm's running figures, updated in O(1) per event."""

    def __init__(self, bucket_seconds: float) -> None:
        self.bucket_seconds = bucket_seconds
        self.consecutive_failures = 0
        self.failure_run_started: float | None = None
        self.last_success_at: float | None = None
        self.last_live_success_at: float | None = None
        self.last_failure_at: float | None = None
        self.last_latency: float | None = None
        self.last_check_at: float | None = None
        self.last_check_ok: bool | None = None
        self.last_stale_at: float | None = None
        self.stale_reason: str | None = None
        self.throttled_until: float | None = None
        self.breaker = BreakerState.CLOSED
        self.recent: deque[float] = deque(maxlen=5)
        self.samples: deque[tuple[float, float]] = deque(maxlen=_SAMPLES_PER_REALM)
        # [bucket_start, ok, failed, latency_sum, latency_n]
        self.buckets: deque[list[float]] = deque()
        self.ok = 0
        self.failed = 0
        self.latency_sum = 0.0
        self.latency_n = 0
        self._p95: float | None = None
        self._p95_dirty = False

    def add(self, at: float, ok: bool, latency: float | None) -> None:
        start = at - (at % self.bucket_seconds)
        if not self.buckets or self.buckets[-1][0] != start:
            self.buckets.append([start, 0, 0, 0.0, 0])
        bucket = self.buckets[-1]
        if ok:
            bucket[1] += 1
            self.ok += 1
        else:
            bucket[2] += 1
            self.failed += 1
        if latency is not None and latency > 0:
            bucket[3] += latency
            bucket[4] += 1
            self.latency_sum += latency
            self.latency_n += 1
            self.samples.append((at, latency))
            self.recent.append(latency)
            self.last_latency = latency
            self._p95_dirty = True

    def trim(self, cutoff: float) -> None:
        while self.buckets and self.buckets[0][0] + self.bucket_seconds <= cutoff:
            _, ok, failed, lat_sum, lat_n = self.buckets.popleft()
            self.ok -= int(ok)
            self.failed -= int(failed)
            self.latency_sum -= lat_sum
            self.latency_n -= int(lat_n)
        while self.samples and self.samples[0][0] < cutoff:
            self.samples.popleft()
            self._p95_dirty = True

    def avg_latency(self) -> float | None:
        return self.latency_sum / self.latency_n if self.latency_n > 0 else None

    def p95_latency(self) -> float | None:
        if self._p95_dirty:
            self._p95 = percentile([s for _, s in self.samples], 0.95)
            self._p95_dirty = False
        return self._p95

    def recent_avg(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[index]


class RealmTable:
    """What this replica knows now: realms, their token statuses and running stats."""

    def __init__(self, *, clock: Clock, interval: float, history_seconds: float) -> None:
        self.interval = interval
        self.history_seconds = history_seconds
        self.bucket_seconds = max(1.0, history_seconds / _BUCKETS_PER_WINDOW)
        self.stats: dict[str, RealmStats] = {}
        self.tokens: dict[str, TokenStatus] = {}
        self.realms: set[str] = set()
        self.realms_loaded_at: float | None = None
        self.global_samples: deque[tuple[float, float]] = deque(maxlen=_GLOBAL_SAMPLES)
        self.started_at = clock.now()

    def stats_for(self, realm_id: str) -> RealmStats:
        stats = self.stats.get(realm_id)
        if stats is None:
            stats = self.stats[realm_id] = RealmStats(self.bucket_seconds)
        return stats

    def window_start(self, now: float) -> float:
        return max(now - self.history_seconds, self.started_at)
