"""The monitor's probe budget: its share of the month's metered reads, spent at an even pace.

Every monitor probe is a CorePlus `companyinfo` read, counted by the meter as the
gateway's own (`s:probe` in the month's counters). Probing every idle realm each interval
would be 2.88 million reads a day at 10,000 realms (86 million a month, the free tier's
500,000 over 170 times), so the
monitor gets `QBO_PROBE_BUDGET_SHARE` of `QBO_COREPLUS_MONTHLY_LIMIT` and spends it at an
even pace across the calendar month (`QBO_COREPLUS_TIMEZONE`):

- by any moment, no more than the elapsed fraction of the month's budget is spent;
- in one interval, at most twice the even pace (`BURST`), so what quiet days left unspent
  is not burst at once when many realms fall into doubt together;
- nothing while the meter's guard is on (the month is heading past the limit), nothing
  once the budget is spent, and everything anew when the month turns.

What was spent is read from the meter's counts, so in Redis mode it is the fleet's (every
replica's probes, one hash per month), in embedded mode this process's. One replica spends
each interval's share: the first to take the budget's lease in the health store (the same
kind of lease that shares out realms); while the store or the meter is unreachable each
replica goes on with what it last read plus the probes it started since.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from qbo_gateway.clock import Clock
from qbo_gateway.economy.meter import Meter
from qbo_gateway.economy.records import PROBE, MonthSpan, month_of
from qbo_gateway.health.store_memory import HealthStore
from qbo_gateway.state.errors import StateUnavailable

BURST = 2.0  # an interval may spend at most this multiple of the even pace
BUDGET_LEASE = "*probe-budget"  # the lease's name among the realms' probe leases

BudgetState = Literal["off", "spending", "paced", "spent", "guard"]


@dataclass(frozen=True)
class BudgetFigures:
    """Where the month's probe budget stands at `now`: plain arithmetic, no I/O."""

    month: MonthSpan
    budget: int
    spent: int
    now: float
    interval: float
    guard: bool

    @property
    def paced(self) -> int:
        """What the even pace allows to have been spent by now."""
        elapsed = min(max(0.0, self.now - self.month.start), self.month.seconds)
        return math.floor(self.budget * elapsed / self.month.seconds)

    @property
    def per_interval(self) -> int:
        """The most one interval may spend."""
        if self.budget <= 0:
            return 0
        return max(1, math.ceil(self.budget * self.interval / self.month.seconds * BURST))

    @property
    def state(self) -> BudgetState:
        if self.budget <= 0:
            return "off"
        if self.spent >= self.budget:
            return "spent"
        if self.guard:
            return "guard"
        return "spending" if self.paced > self.spent else "paced"

    def allowance(self) -> int:
        if self.state != "spending":
            return 0
        return min(self.paced - self.spent, self.per_interval, self.budget - self.spent)

    def next_due(self) -> float | None:
        """When the pace next allows a probe (the month's end once spent or guarded)."""
        state = self.state
        if state == "off":
            return None
        if state in ("spent", "guard"):
            return self.month.end
        if state == "spending":
            return self.now
        # paced reaches spent + 1 at start + (spent + 1) / budget of the month
        return self.month.start + (self.spent + 1) * self.month.seconds / self.budget


def monthly_budget(share: float, monthly_limit: int) -> int:
    return math.floor(share * monthly_limit)


class ProbeBudget:
    """The probe cycle's `ProbeSpend`: the allowance for this cycle, and the report."""

    def __init__(
        self,
        meter: Meter,
        *,
        store: HealthStore,
        clock: Clock,
        share: float,
        interval: float,
    ) -> None:
        self._meter = meter
        self._store = store
        self._clock = clock
        self.share = share
        self.budget = monthly_budget(share, meter.options.monthly_limit)
        self._interval = interval
        self._known: tuple[str, int] = ("", 0)  # (month, the meter's probe count) last read
        self._since = 0  # probes this replica started since that read

    async def allowance(self, *, owner: str, interval: float) -> int:
        if self.budget <= 0:
            return 0
        try:
            lease = await self._store.acquire_probe(
                BUDGET_LEASE, owner=owner, now=self._clock.now(), interval=interval
            )
        except StateUnavailable:
            lease = "acquired"  # the store is down: spend this replica's share
        if lease != "acquired":
            return 0  # another replica spends this interval's share
        return (await self.figures(interval)).allowance()

    def launched(self, n: int) -> None:
        self._since += n

    async def figures(self, interval: float | None = None) -> BudgetFigures:
        await self._meter.refresh()  # the guard's state, and the month's roll
        now = self._clock.now()
        month = month_of(now, self._meter.options.zone)
        return BudgetFigures(
            month=month,
            budget=self.budget,
            spent=await self._spent(month),
            now=now,
            interval=self._interval if interval is None else interval,
            guard=self._meter.guard_active,
        )

    async def _spent(self, month: MonthSpan) -> int:
        await self._meter.drained_quietly()
        try:
            spent = await self._meter.backend.count(month.label, PROBE)
        except StateUnavailable:
            known = self._known[1] if self._known[0] == month.label else 0
            return known + self._since
        self._known, self._since = (month.label, spent), 0
        return spent

    async def report(self, next_cycle_at: float | None) -> dict[str, Any]:
        fig = await self.figures()
        due = fig.next_due()
        if due is not None:
            # A probe is made only by a cycle: no earlier than the next one, none unless
            # the monitor runs.
            due = None if next_cycle_at is None else max(due, next_cycle_at)
        return {
            "month": fig.month.label,
            "share": self.share,
            "budget": fig.budget,
            "spent": fig.spent,
            "remaining": max(0, fig.budget - fig.spent),
            "paced": min(fig.paced, fig.budget),
            "per_interval_max": fig.per_interval,
            "state": fig.state,
            "next_probe_due": None if due is None else _iso(due),
            "resets_at": _iso(fig.month.end),
        }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
