"""The guard near the cap: what reads do while the month's projection passes the limit.

Past the limit Intuit blocks every read until the month ends, which for the services behind
the gateway is an outage. While the meter says the month is heading there, the policy
(`QBO_COREPLUS_GUARD`) decides: `stale` answers reads from stored answers beyond their
freshness, `background` refuses reads of callers marked `background: true` in the callers
file (429 `GW-READ-BUDGET`), `both` does both, `off` neither. Writes are never touched.
"""

from __future__ import annotations

import math
from typing import Literal

from qbo_gateway.economy.meter import Meter
from qbo_gateway.faults import ReadBudget
from qbo_gateway.metrics import Metrics

GuardPolicy = Literal["off", "stale", "background", "both"]
# A refused caller comes back within the hour: the projection may fall below the limit.
_MAX_RETRY_AFTER = 3600.0


class ReadGuard:
    """Answers the read cache's two questions from the meter's state (no I/O)."""

    def __init__(self, meter: Meter, policy: GuardPolicy, *, metrics: Metrics) -> None:
        self._meter = meter
        self._stale = policy in ("stale", "both")
        self._refuse = policy in ("background", "both")
        self._refused = metrics.rate_limited.labels(reason="read_budget")

    def serve_stale(self) -> bool:
        """Serve a stored read beyond its freshness instead of spending a metered call."""
        return self._stale and self._meter.guard_active

    def check(self, *, background: bool) -> None:
        """Raise `ReadBudget` for a background caller's read while the guard is on."""
        if background and self._refuse and self._meter.guard_active:
            self._refused.inc()
            wait = min(_MAX_RETRY_AFTER, self._meter.seconds_to_month_end())
            raise ReadBudget(
                "The month's metered-read budget is nearly spent; background reads are paused",
                retry_after=float(max(1, math.ceil(wait))),
            )
