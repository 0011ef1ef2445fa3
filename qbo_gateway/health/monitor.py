"""Health monitoring façade: the gateway's `Observer`, wired from the health_* parts.

`HealthMonitor` is what the composition root builds and the request path reports to. Each
event updates a small per-realm aggregate in place and runs the alert rules at once
(alerts appear within seconds of live traffic); history writes are buffered and flushed by
a background task, so nothing here blocks or fails a request. The work itself lives in
small modules, one concept each:

- `health_stats`: per-realm running figures and the shared in-memory picture;
- `health_events`: what a request, stale answer, breaker change or throttle means;
- `health_tokens`: token events and stored token statuses as alerts;
- `health_history`: the buffered history writer and how workers stop safely;
- `health_probe`: the monitor loop (idle realms only, one lease per realm) and housekeeping;
- `health_status`: the healthy/degraded/unhealthy/needs_reconnect grading;
- `health_sla`: uptime, MTTR, incidents and alert delay against targets;
- `health_views`, `health_business`: the summary/dashboard and one-realm views.

This module keeps the public names importable from `qbo_gateway.health` and owns the
lifecycle (open/close order) that ties the parts' background tasks together.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog

from qbo_gateway.admission.records import AdmissionPolicy, BreakerState, RealmLoad
from qbo_gateway.clock import Clock
from qbo_gateway.faults import FaultClass
from qbo_gateway.health.alerts import AlertManager, AlertThresholds, WebhookNotifier
from qbo_gateway.health.business_view import BusinessView, entry_json
from qbo_gateway.health.grading import (
    STATUSES,
    overall_status,
    realm_status,
    status_counts,
    update_realm_gauge,
)
from qbo_gateway.health.history_writer import HistoryBuffer
from qbo_gateway.health.probe_cycle import CycleReport, ProbeCycle
from qbo_gateway.health.sla import SLA_TARGETS, Incidents, merge_incidents
from qbo_gateway.health.stats import HealthFigures, RealmStats, percentile
from qbo_gateway.health.store_memory import HealthStore, HistoryEntry
from qbo_gateway.health.token_rules import TokenRules
from qbo_gateway.health.traffic_rules import TrafficRules, classify_outcome
from qbo_gateway.health.views import HealthViews
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import TokenEvent
from qbo_gateway.tokens.records import TokenRecord, TokenStatus
from qbo_gateway.workers import cancel_when_idle

__all__ = [
    "SLA_TARGETS",
    "STATUSES",
    "CycleReport",
    "HealthMonitor",
    "Incidents",
    "RealmStats",
    "cancel_when_idle",
    "classify_outcome",
    "entry_json",
    "merge_incidents",
    "percentile",
]

log = structlog.get_logger(__name__)


class HealthMonitor:
    """The Observer, history, SLA, and the monitor loop. See the module docstring."""

    def __init__(
        self,
        *,
        store: HealthStore,
        clock: Clock,
        metrics: Metrics,
        realm_ids: Callable[[], Awaitable[list[str]]],
        token_statuses: Callable[[], Awaitable[list[TokenStatus]]],
        token_status: Callable[[str], Awaitable[TokenStatus | None]],
        load: Callable[[str], Awaitable[RealmLoad]],
        probe: Callable[[str], Awaitable[None]],
        interval: float = 300.0,
        history_seconds: float = 86400.0,
        autostart: bool = True,
        thresholds: AlertThresholds | None = None,
        webhook_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        policy: AdmissionPolicy | None = None,
        backend_up: Callable[[], bool] | None = None,
        owner: str | None = None,
        probe_concurrency: int = 8,
        tick_seconds: float = 5.0,
        status_cache_seconds: float = 30.0,
        webhook_base_delay: float = 1.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.autostart = autostart
        self.thresholds = thresholds or AlertThresholds()
        self.policy = policy
        self.owner = owner or uuid.uuid4().hex[:12]
        self._probe = probe
        self._backend_up = backend_up
        self._tick_seconds = tick_seconds
        notifier = None
        if webhook_url and session is None:
            log.warning("alert_webhook_disabled", reason="no HTTP session was given")
        if webhook_url and session is not None:
            notifier = WebhookNotifier(
                url=webhook_url,
                session=session,
                clock=clock,
                metrics=metrics,
                base_delay=webhook_base_delay,
            )
        self.alerts = AlertManager(
            store=store,
            clock=clock,
            metrics=metrics,
            notifier=notifier,
            history_seconds=history_seconds,
        )
        self.figures = HealthFigures(
            clock=clock, interval=interval, history_seconds=history_seconds
        )
        self.history = HistoryBuffer(store=store, clock=clock)
        self.token_rules = TokenRules(
            figures=self.figures,
            alerts=self.alerts,
            clock=clock,
            thresholds=self.thresholds,
            realm_ids=realm_ids,
            token_statuses=token_statuses,
            status_cache_seconds=status_cache_seconds,
        )
        self.traffic = TrafficRules(
            figures=self.figures,
            alerts=self.alerts,
            history=self.history,
            clock=clock,
            metrics=metrics,
            thresholds=self.thresholds,
        )
        self.cycle = ProbeCycle(
            figures=self.figures,
            alerts=self.alerts,
            tokens=self.token_rules,
            store=store,
            clock=clock,
            metrics=metrics,
            load=load,
            probe=probe,
            owner=self.owner,
            probe_concurrency=probe_concurrency,
        )
        self.views = HealthViews(
            figures=self.figures,
            alerts=self.alerts,
            tokens=self.token_rules,
            cycle=self.cycle,
            clock=clock,
            metrics=metrics,
        )
        self.business_view = BusinessView(
            figures=self.figures,
            alerts=self.alerts,
            tokens=self.token_rules,
            store=store,
            clock=clock,
            token_status=token_status,
            load=load,
            policy=policy,
        )
        self._tick_idle = asyncio.Event()
        self._tick_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ settings and state

    @property
    def interval(self) -> float:
        return self.figures.interval

    @property
    def history_seconds(self) -> float:
        return self.figures.history_seconds

    @property
    def started_at(self) -> float:
        return self.figures.started_at

    @property
    def last_cycle(self) -> CycleReport | None:
        return self.cycle.last_cycle

    @property
    def monitoring(self) -> bool:
        return self.cycle.monitoring

    # ------------------------------------------------------------------ Observer (sync)

    def request_finished(
        self,
        realm_id: str,
        *,
        outcome: str,
        status: int,
        latency: float,
        fault: FaultClass | None,
        probe: bool = False,
    ) -> None:
        try:
            self.traffic.request_finished(realm_id, outcome, status, latency, fault, probe)
        except Exception as exc:  # noqa: BLE001 - observing must never fail a request
            log.error("health_observe_failed", error=type(exc).__name__)

    def stale_served(self, realm_id: str, *, reason: str, age: float) -> None:
        self.traffic.stale_served(realm_id, reason=reason, age=age)

    def breaker_changed(self, realm_id: str, state: BreakerState) -> None:
        self.traffic.breaker_changed(realm_id, state)

    def throttled(self, realm_id: str, *, until: float) -> None:
        self.traffic.throttled(realm_id, until=until)

    def token_event(
        self, realm_id: str, event: TokenEvent, record: TokenRecord | None = None
    ) -> None:
        try:
            self.token_rules.event(realm_id, event, record)
        except Exception as exc:  # noqa: BLE001 - observing must never fail a token call
            log.error("health_token_event_failed", error=type(exc).__name__)

    # ------------------------------------------------------------------ token state

    async def refresh_tokens(self, *, force: bool = False) -> None:
        """Reload realm ids and token statuses (cached for a few seconds) and re-run the
        token rules, which depend on the passing of time (expiry)."""
        await self.token_rules.refresh(force=force)

    async def refresh_tokens_quietly(self) -> None:
        await self.token_rules.refresh_quietly()

    # ------------------------------------------------------------------ monitor loop

    async def run_cycle(self) -> CycleReport:
        """One monitor pass: probe each idle realm this replica holds the lease for."""
        return await self.cycle.run_cycle()

    async def check_now(self, realm_id: str) -> HistoryEntry | None:
        """Probe one realm at once (admin action); returns the check it recorded."""
        await self._probe(realm_id)
        await self.flush()
        checks = [
            e
            for e in await self.store.history(realm_id, since=0.0, limit=20)
            if e.source == "check"
        ]
        return checks[-1] if checks else None

    async def housekeeping(self) -> None:
        """The frequent background chores: throttles end, token rules, shared alerts."""
        await self.cycle.housekeeping()

    async def start_monitoring(self) -> bool:
        return await self.cycle.start()

    async def stop_monitoring(self) -> bool:
        return await self.cycle.stop()

    async def _tick_loop(self) -> None:
        while True:
            self._tick_idle.set()
            await self.clock.sleep(self._tick_seconds)
            self._tick_idle.clear()
            try:
                await self.housekeeping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - chores retry next tick
                log.warning("health_housekeeping_failed", error=type(exc).__name__)

    async def open(self, *, background: bool = True) -> None:
        """Start the writers; with `background`, the housekeeping tick and (autostart)
        the monitor loop too. Tests driving a ManualClock pass background=False."""
        self.alerts.start()
        self.history.start()
        if background and (self._tick_task is None or self._tick_task.done()):
            with contextlib.suppress(Exception):
                await self.refresh_tokens(force=True)
            self._tick_task = asyncio.get_running_loop().create_task(self._tick_loop())
            if self.autostart:
                await self.start_monitoring()

    async def close(self) -> None:
        await self.stop_monitoring()
        # Each worker finishes the write in hand and parks before it is cancelled
        # (see cancel_when_idle).
        await cancel_when_idle(self._tick_task, self._tick_idle)
        self._tick_task = None
        await self.history.stop()
        await self.alerts.close()

    async def flush(self) -> None:
        """Wait until buffered history and alert writes are stored (tests, admin check)."""
        await self.history.flush()
        await self.alerts.flush()

    # ------------------------------------------------------------------ views

    def realm_status(self, realm_id: str, now: float) -> str:
        return realm_status(self.figures, self.alerts, realm_id, now)

    def known_realms(self) -> set[str]:
        return self.figures.realms

    def backend_up(self) -> bool:
        return self._backend_up is None or self._backend_up()

    def status_counts(self, now: float) -> tuple[dict[str, int], dict[str, str]]:
        return status_counts(self.figures, self.alerts, now)

    def update_realm_gauge(self) -> dict[str, int]:
        return update_realm_gauge(self.figures, self.alerts, self.metrics, self.clock.now())

    @staticmethod
    def overall_status(counts: dict[str, int]) -> str:
        return overall_status(counts)

    def monitor_json(self) -> dict[str, Any]:
        return self.cycle.monitor_json()

    async def summary(self) -> dict[str, Any]:
        return await self.views.summary()

    async def dashboard(
        self, *, status: str | None = None, limit: int | None = None, offset: int = 0
    ) -> dict[str, Any]:
        """Totals and SLA over every realm; rows (worst first) only for the asked page."""
        return await self.views.dashboard(status=status, limit=limit, offset=offset)

    async def business(self, realm_id: str) -> dict[str, Any] | None:
        """One realm's full picture from shared state (history, alerts, tokens, admission)."""
        return await self.business_view.business(realm_id)
