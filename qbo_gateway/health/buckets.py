"""Health history as time buckets: per realm (and for the whole fleet), one bucket per minute.

A bucket is a handful of counters: requests, successes and failures (the ones that say QBO
is failing), failures by fault class, a latency sum and histogram, breaker transitions,
token events, probes, stale answers, and the milliseconds a realm was down. Detection,
delivery and recovery times are kept one field per incident (`det:<alert id>` = ms), so
both the worst and the average can be read back. Everything is a sum, so replicas add into
the same bucket (Redis `HINCRBY`) and the figures are the fleet's.

`Series` is what stores return (bucket number -> counters); `Totals` sums a range of it and
derives the figures the SLA block, the timeline and the status page show.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

Counts = dict[str, int]
Series = dict[int, Counts]  # bucket number (start // width) -> counters

# Upper bounds (seconds) of the latency histogram bins; the last bin is open-ended.
LATENCY_BOUNDS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
HIST_FIELDS: tuple[str, ...] = tuple(f"h{i}" for i in range(len(LATENCY_BOUNDS) + 1))
# Counters nearly every busy minute has: kept densely in the in-process ring.
DENSE_FIELDS: tuple[str, ...] = ("req", "ok", "fail", *HIST_FIELDS)
# Per-incident times are one field per alert id ("det:<id>", "dlv:<id>", "rec:<id>"), in ms.


def latency_bin(seconds: float) -> str:
    for i, bound in enumerate(LATENCY_BOUNDS):
        if seconds <= bound:
            return HIST_FIELDS[i]
    return HIST_FIELDS[-1]


def bucket_of(at: float, width: float) -> int:
    return int(at // width)


def spread(start: float, end: float, width: float) -> Iterable[tuple[int, int]]:
    """(bucket, milliseconds) of the span [start, end) in each bucket it touches."""
    at = start
    while at < end:
        bucket = bucket_of(at, width)
        stop = min(end, (bucket + 1) * width)
        yield bucket, max(0, round((stop - at) * 1000))
        at = stop


@dataclass
class Totals:
    """The sum of a range of buckets, and the figures derived from it."""

    counts: Counts = field(default_factory=dict)
    detect_ms: list[int] = field(default_factory=list)
    deliver_ms: list[int] = field(default_factory=list)
    recover_ms: list[int] = field(default_factory=list)

    def get(self, name: str) -> int:
        return self.counts.get(name, 0)

    @property
    def latency_n(self) -> int:
        return sum(self.get(h) for h in HIST_FIELDS)

    def avg_latency(self) -> float | None:
        n = self.latency_n
        return self.get("lat_ms") / 1000 / n if n else None

    def p95_latency(self) -> float | None:
        """The upper bound of the histogram bin holding the 95th percentile (the last,
        open-ended bin reports the average of what fell in it, at least its lower bound)."""
        n = self.latency_n
        if not n:
            return None
        rank = 0.95 * n
        seen = 0
        for i, name in enumerate(HIST_FIELDS):
            seen += self.get(name)
            if seen >= rank:
                if i < len(LATENCY_BOUNDS):
                    return LATENCY_BOUNDS[i]
                break
        return max(LATENCY_BOUNDS[-1], self.avg_latency() or 0.0)


def add_into(into: Counts, counts: Counts) -> None:
    for name, n in counts.items():
        into[name] = into.get(name, 0) + n


def total(series: Series, first: int, last: int) -> Totals:
    """Sum buckets first..last (inclusive)."""
    out = Totals()
    sums = out.counts
    timed = {"det:": out.detect_ms, "dlv:": out.deliver_ms, "rec:": out.recover_ms}
    for bucket, counts in series.items():
        if first <= bucket <= last:
            for name, n in counts.items():
                if name[3:4] == ":":  # det:<id>, dlv:<id>, rec:<id>
                    timed[name[:4]].append(n)
                else:
                    sums[name] = sums.get(name, 0) + n
    return out
