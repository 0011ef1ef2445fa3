"""The month's figures as plain arithmetic: projected month-end use and alert levels.

No I/O and no clock here, so every threshold is tested with plain numbers. The projection
is today's use plus the recent rate times what is left of the month: the rate over the
last `window` seconds of samples once they span `min_span`, else the month's average once
the month is `min_span` old, else nothing (too early to extrapolate a few calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qbo_gateway.economy.records import MonthSpan
from qbo_gateway.health.store_memory import Severity

USAGE_STEPS: tuple[tuple[float, Severity], ...] = (
    (0.95, "critical"),
    (0.80, "warning"),
    (0.50, "warning"),
)


@dataclass(frozen=True)
class MonthFigures:
    """Where the month stands: used, limit, the rate and the projection."""

    month: MonthSpan
    used: int
    limit: int
    rate_per_hour: float
    projected: float

    @property
    def ratio(self) -> float:
        return self.used / self.limit if self.limit > 0 else 0.0

    @property
    def over_projection(self) -> bool:
        return self.projected > self.limit or self.used >= self.limit


def recent_rate(
    samples: Sequence[tuple[float, int]],
    month: MonthSpan,
    used: int,
    now: float,
    *,
    min_span: float,
) -> float:
    """Calls per second: from the samples (oldest first) when they span enough time."""
    if len(samples) >= 2:
        (t0, n0), (t1, n1) = samples[0], samples[-1]
        if t1 - t0 >= min_span:
            return max(0.0, (n1 - n0) / (t1 - t0))
    elapsed = now - month.start
    if elapsed >= min_span:
        return used / elapsed
    return 0.0


def figures(
    samples: Sequence[tuple[float, int]],
    month: MonthSpan,
    used: int,
    limit: int,
    now: float,
    *,
    min_span: float = 600.0,
) -> MonthFigures:
    rate = recent_rate(samples, month, used, now, min_span=min_span)
    left = max(0.0, month.end - now)
    return MonthFigures(month, used, limit, rate * 3600.0, used + rate * left)


def usage_step(ratio: float) -> tuple[Severity | None, int]:
    """The alert severity and the threshold (percent) the month's use has passed."""
    for step, severity in USAGE_STEPS:
        if ratio >= step:
            return severity, round(step * 100)
    return None, 0
