"""The monitor loop: which realms to probe each interval, and the frequent housekeeping.

A probe is a metered QBO read (CorePlus), so a cycle spends no more than its budget allows
(`ProbeSpend`: the read economy's monthly probe budget, paced over the month) and spends
it where it tells most: the idle realms ranked by doubt (`probe_doubt`). Realms with a
live success within the interval are never probed (their traffic is the probe), nor
realms that must be reconnected or are in QBO's cool-down; token health is never a reason
to probe (it comes from the token store). Across replicas, one lease per realm and interval
in the store decides who probes; if the store is down, this replica probes rather than
leave the realm unwatched. Probes go through the same admission path as proxied calls (the
injected `probe`), a few at a time. After probing, the cycle catches up with state other
replicas changed (closed circuits) and with time (ended throttles).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from qbo_gateway.admission.records import BreakerState, RealmLoad
from qbo_gateway.clock import Clock
from qbo_gateway.health.alert_rules import iso
from qbo_gateway.health.alerts import AlertManager
from qbo_gateway.health.grading import update_realm_gauge
from qbo_gateway.health.probe_doubt import rank
from qbo_gateway.health.stats import RealmTable
from qbo_gateway.health.store_memory import HealthStore
from qbo_gateway.health.token_rules import TokenRules
from qbo_gateway.logs import failure
from qbo_gateway.metrics import Metrics
from qbo_gateway.state.errors import StateUnavailable

log = structlog.get_logger(__name__)


class ProbeSpend(Protocol):
    """How many probes a cycle may make (the read economy's probe budget)."""

    async def allowance(self, *, owner: str, interval: float) -> int:
        """Probes this cycle may make now (0 while the budget, the pace or the guard say
        no, or while another replica spends this interval's share)."""
        ...

    def launched(self, n: int) -> None:
        """`n` probes were started (counted while the meter cannot be read)."""
        ...

    async def report(self, next_cycle_at: float | None) -> dict[str, Any]:
        """The budget's figures for /health/summary and /health/dashboard."""
        ...


@dataclass
class CycleReport:
    at: float = 0.0
    realms: int = 0
    candidates: int = 0
    allowance: int | None = None  # None: no budget (every candidate may be probed)
    probed: int = 0
    skipped_busy: int = 0
    skipped_leased: int = 0
    skipped_reconnect: int = 0
    skipped_cooling: int = 0
    skipped_no_doubt: int = 0
    skipped_budget: int = 0
    errors: int = 0
    duration: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)  # the strongest, per probe made

    def to_json(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "realms": self.realms,
            "candidates": self.candidates,
            "allowance": self.allowance,
            "probed": self.probed,
            "skipped_busy": self.skipped_busy,
            "skipped_leased": self.skipped_leased,
            "skipped_reconnect": self.skipped_reconnect,
            "skipped_cooling": self.skipped_cooling,
            "skipped_no_doubt": self.skipped_no_doubt,
            "skipped_budget": self.skipped_budget,
            "reasons": dict(sorted(self.reasons.items())),
            "errors": self.errors,
            "duration_seconds": round(self.duration, 3),
        }


class ProbeCycle:
    """Runs cycles on demand or every `table.interval` while monitoring is started."""

    def __init__(
        self,
        *,
        table: RealmTable,
        alerts: AlertManager,
        tokens: TokenRules,
        store: HealthStore,
        clock: Clock,
        metrics: Metrics,
        load: Callable[[str], Awaitable[RealmLoad]],
        probe: Callable[[str], Awaitable[None]],
        owner: str,
        probe_concurrency: int,
        idle_seconds: float = 86400.0,
    ) -> None:
        self.table = table
        self.alerts = alerts
        self.tokens = tokens
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.owner = owner
        self._load = load
        self._probe = probe
        self._probe_concurrency = probe_concurrency
        self.idle_seconds = idle_seconds
        self.budget: ProbeSpend | None = None  # set by the read economy's wiring
        self._monitor_task: asyncio.Task[None] | None = None
        self.last_cycle: CycleReport | None = None

    @property
    def monitoring(self) -> bool:
        return self._monitor_task is not None and not self._monitor_task.done()

    def monitor_json(self) -> dict[str, Any]:
        return {
            "running": self.monitoring,
            "interval_seconds": self.table.interval,
            "history_seconds": self.table.history_seconds,
            "last_cycle": self.last_cycle.to_json() if self.last_cycle else None,
        }

    async def monitor_report(self) -> dict[str, Any]:
        """`monitor_json` plus the probe budget's figures (read from the meter)."""
        found = self.monitor_json()
        if self.budget is not None:
            next_cycle = None
            if self.monitoring and self.last_cycle is not None:
                next_cycle = self.last_cycle.at + self.table.interval
            found["probe_budget"] = await self.budget.report(next_cycle)
        return found

    async def run_cycle(self) -> CycleReport:
        """One monitor pass: probe the most doubtful idle realms the budget allows, each
        only if this replica holds its lease."""
        table = self.table
        interval = table.interval
        started = self.clock.monotonic()
        now = self.clock.now()
        report = CycleReport(at=now)
        await self.tokens.refresh(force=True)
        report.realms = len(table.realms)
        circuits = {
            realm_id
            for realm_id, kinds in self.alerts.realms_with_alerts().items()
            if "circuit_open" in kinds
        }
        ranking = rank(table, circuit_alerts=circuits, now=now, idle_seconds=self.idle_seconds)
        report.candidates = len(ranking)
        report.skipped_busy = ranking.busy
        report.skipped_reconnect = ranking.reconnect
        report.skipped_cooling = ranking.cooling
        report.skipped_no_doubt = ranking.no_doubt
        allowance = len(ranking)
        if self.budget is not None and allowance:
            allowance = await self.budget.allowance(owner=self.owner, interval=interval)
            report.allowance = allowance
        todo: list[str] = []
        walked = 0
        for doubt in ranking.ordered():
            if len(todo) >= allowance:
                break
            walked += 1
            realm_id = doubt.realm_id
            try:
                lease = await self.store.acquire_probe(
                    realm_id, owner=self.owner, now=now, interval=interval
                )
            except StateUnavailable:
                lease = "acquired"
            if lease == "busy":
                report.skipped_busy += 1
            elif lease == "held":
                report.skipped_leased += 1
            else:
                todo.append(realm_id)
                report.reasons[doubt.reasons[0]] += 1
        report.skipped_budget = len(ranking) - walked
        if self.budget is not None:
            self.budget.launched(len(todo))
        self.metrics.health_checks.labels(result="skipped_busy").inc(report.skipped_busy)
        gate = asyncio.Semaphore(self._probe_concurrency)

        async def one(realm_id: str) -> None:
            async with gate:
                try:
                    await self._probe(realm_id)
                    report.probed += 1
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one realm's probe must not stop others
                    report.errors += 1
                    self.metrics.health_checks.labels(result="error").inc()
                    log.warning("health_probe_error", realm_id=realm_id, **failure(exc))

        await asyncio.gather(*(one(r) for r in todo))
        await self._reconcile_breakers()
        self.expire_throttles(self.clock.now())
        update_realm_gauge(table, self.alerts, self.metrics, self.clock.now())
        report.duration = self.clock.monotonic() - started
        self.last_cycle = report
        log.info("health_cycle", **report.to_json())
        return report

    async def _reconcile_breakers(self) -> None:
        # The replica that closed a circuit reports it; others learn it here.
        for realm_id, kinds in list(self.alerts.realms_with_alerts().items()):
            if "circuit_open" not in kinds:
                continue
            try:
                load = await self._load(realm_id)
            except Exception:  # noqa: BLE001, S112 - unknown now; the next cycle retries
                continue
            if load.breaker is BreakerState.CLOSED:
                self.table.stats_for(realm_id).breaker = BreakerState.CLOSED
                self.alerts.set_condition(realm_id, "circuit_open", None)

    def expire_throttles(self, now: float) -> None:
        for realm_id, kinds in list(self.alerts.realms_with_alerts().items()):
            alert = kinds.get("throttled")
            if alert is None:
                continue
            stats = self.table.stats.get(realm_id)
            until = stats.throttled_until if stats is not None else None
            if until is None:
                until = alert.raised_at + 60.0
            if until <= now:
                if stats is not None:
                    stats.throttled_until = None
                self.alerts.set_condition(realm_id, "throttled", None)

    async def housekeeping(self) -> None:
        """The frequent background chores: throttles end, token rules, shared alerts."""
        self.expire_throttles(self.clock.now())
        with contextlib.suppress(StateUnavailable):
            await self.alerts.sync()
        try:
            await self.tokens.refresh()
        except Exception as exc:  # noqa: BLE001 - token state unreadable now; retry next tick
            log.warning("health_token_refresh_failed", **failure(exc))
        update_realm_gauge(self.table, self.alerts, self.metrics, self.clock.now())

    async def start(self) -> bool:
        if self.monitoring:
            return False
        self._monitor_task = asyncio.get_running_loop().create_task(self._monitor_loop())
        log.info("health_monitor_started", interval=self.table.interval)
        return True

    async def stop(self) -> bool:
        task, self._monitor_task = self._monitor_task, None
        if task is None or task.done():
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.info("health_monitor_stopped")
        return True

    async def _monitor_loop(self) -> None:
        while True:
            try:
                await self.run_cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop outlives one bad cycle
                log.error("health_cycle_failed", **failure(exc))
            await self.clock.sleep(self.table.interval)
