"""The realm table: what this replica knows of each realm, with per-realm running figures.

Every event updates a `RealmStats` in O(1) (time buckets, bounded latency samples), so the
summary and dashboard read precomputed figures instead of scanning history, even at 10,000
realms. `RealmTable` is the one picture the event rules, token rules, probe cycle and
views all read and write; keeping it in one object is what lets them live in separate
modules without copies drifting apart.
"""

from __future__ import annotations

import math
from array import array

from qbo_gateway.admission.records import BreakerState
from qbo_gateway.clock import Clock
from qbo_gateway.tokens.records import TokenStatus

_SAMPLES_PER_REALM = 200
_RECENT = 5  # latencies the slow-response rule averages
_BUCKETS_PER_WINDOW = 96


class RealmStats:
    """One realm's running figures, updated in O(1) per event.

    10,000 of these live in a sidecar, so the running window is kept in flat arrays rather
    than objects per event, created on the first latency seen: the window's latency sums
    per bucket (start, sum, count; only buckets that had a latency), the last
    `_SAMPLES_PER_REALM` latency samples (times, seconds) for the p95, and the last
    `_RECENT` latencies for the slow-response rule.
    """

    __slots__ = (
        "_buckets",
        "_p95",
        "_p95_dirty",
        "_recent",
        "_sample_at",
        "_sample_s",
        "breaker",
        "bucket_seconds",
        "consecutive_failures",
        "failure_run_started",
        "last_check_at",
        "last_check_ok",
        "last_failure_at",
        "last_latency",
        "last_live_success_at",
        "last_stale_at",
        "last_success_at",
        "last_throttled_at",
        "latency_n",
        "latency_sum",
        "reconnected_at",
        "stale_reason",
        "throttled_until",
        "token_trouble_at",
    )

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
        # Remembered past the cool-down and the alert: the probe cycle's reasons to doubt.
        self.last_throttled_at: float | None = None
        self.reconnected_at: float | None = None
        self.token_trouble_at: float | None = None  # refresh failing or outcome unknown since
        self.breaker = BreakerState.CLOSED
        self.latency_sum = 0.0
        self.latency_n = 0
        self._buckets: array[float] | None = None  # start, sum, count; three per bucket
        self._sample_at: array[float] | None = None
        self._sample_s: array[float] | None = None  # single precision: plenty for a p95
        self._recent: array[float] | None = None
        self._p95: float | None = None
        self._p95_dirty = False

    def add(self, at: float, ok: bool, latency: float | None) -> None:
        if latency is None or latency <= 0:
            return
        buckets, sample_at, sample_s, recent = (
            self._buckets,
            self._sample_at,
            self._sample_s,
            self._recent,
        )
        if buckets is None or sample_at is None or sample_s is None or recent is None:
            buckets = self._buckets = array("d")
            sample_at = self._sample_at = array("d")
            sample_s = self._sample_s = array("f")
            recent = self._recent = array("d")
        start = at - (at % self.bucket_seconds)
        if not buckets or buckets[-3] != start:
            buckets.extend((start, 0.0, 0.0))
        buckets[-2] += latency
        buckets[-1] += 1
        self.latency_sum += latency
        self.latency_n += 1
        sample_at.append(at)
        sample_s.append(latency)
        if len(sample_at) > _SAMPLES_PER_REALM:
            del sample_at[0], sample_s[0]
        recent.append(latency)
        if len(recent) > _RECENT:
            del recent[0]
        self.last_latency = latency
        self._p95_dirty = True

    def trim(self, cutoff: float) -> None:
        buckets, sample_at, sample_s = self._buckets, self._sample_at, self._sample_s
        if buckets is None or sample_at is None or sample_s is None:
            return
        gone = 0
        while gone < len(buckets) and buckets[gone] + self.bucket_seconds <= cutoff:
            self.latency_sum -= buckets[gone + 1]
            self.latency_n -= int(buckets[gone + 2])
            gone += 3
        if gone:
            del buckets[:gone]
        old = 0
        while old < len(sample_at) and sample_at[old] < cutoff:
            old += 1
        if old:
            del sample_at[:old], sample_s[:old]
            self._p95_dirty = True

    def avg_latency(self) -> float | None:
        return self.latency_sum / self.latency_n if self.latency_n > 0 else None

    def p95_latency(self) -> float | None:
        if self._p95_dirty:
            samples = [] if self._sample_s is None else list(self._sample_s)
            self._p95 = percentile(samples, 0.95)
            self._p95_dirty = False
        return self._p95

    def recent_avg(self) -> float | None:
        recent = self._recent
        return sum(recent) / len(recent) if recent else None


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
        self.started_at = clock.now()

    def stats_for(self, realm_id: str) -> RealmStats:
        stats = self.stats.get(realm_id)
        if stats is None:
            stats = self.stats[realm_id] = RealmStats(self.bucket_seconds)
        return stats

    def window_start(self, now: float) -> float:
        return max(now - self.history_seconds, self.started_at)
