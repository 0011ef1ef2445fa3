"""The health subsystem's builder: its parts, wired once, and their start/stop order.

`build_health` is what the composition root calls. It returns `Health`, a plain record of
the parts, so each caller takes only the part it needs: the request path and the token
manager take `observer`, the ops routes take the views, alerts and probe cycle. `Health`
itself owns no behaviour beyond the lifecycle that ties the parts' background workers
together (open, flush, close) and the admin check, which needs several of them at once.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import structlog

from qbo_gateway.admission.records import AdmissionPolicy, RealmLoad
from qbo_gateway.clock import Clock
from qbo_gateway.health.alert_rules import AlertThresholds
from qbo_gateway.health.alerts import AlertManager
from qbo_gateway.health.business_view import BusinessView
from qbo_gateway.health.history_writer import HistoryBuffer
from qbo_gateway.health.housekeeping import HousekeepingTick
from qbo_gateway.health.observer import HealthObserver
from qbo_gateway.health.probe_cycle import ProbeCycle
from qbo_gateway.health.sla import SlaTargets
from qbo_gateway.health.stats import RealmTable
from qbo_gateway.health.store_memory import BUCKET_SECONDS, HealthStore, HistoryEntry
from qbo_gateway.health.token_rules import TokenRules
from qbo_gateway.health.traffic_rules import TrafficRules
from qbo_gateway.health.views import HealthViews
from qbo_gateway.health.webhook import WebhookNotifier
from qbo_gateway.metrics import Metrics
from qbo_gateway.settings import Settings
from qbo_gateway.tokens.records import TokenStatus

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class HealthSources:
    """What health asks of the rest of the gateway (the root binds these late: the proxy
    and token manager are built after the observer they report to)."""

    token_statuses: Callable[[], Awaitable[list[TokenStatus]]]
    token_status: Callable[[str], Awaitable[TokenStatus | None]]
    load: Callable[[str], Awaitable[RealmLoad]]
    probe: Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class HealthOptions:
    """The health settings, with the defaults the daemon uses."""

    interval: float = 300.0
    history_seconds: float = 86400.0
    bucket_seconds: float = BUCKET_SECONDS
    targets: SlaTargets = field(default_factory=SlaTargets)
    autostart: bool = True
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)
    webhook_url: str | None = None
    probe_concurrency: int = 8
    probe_idle_seconds: float = 86400.0
    tick_seconds: float = 5.0
    status_cache_seconds: float = 30.0
    webhook_base_delay: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthOptions:
        return cls(
            interval=settings.monitor_interval_seconds,
            history_seconds=settings.health_history_seconds,
            bucket_seconds=settings.health_bucket_seconds,
            targets=SlaTargets(
                uptime_ratio=settings.sla_uptime_target,
                avg_response_seconds=settings.sla_avg_response_seconds,
                recovery_seconds=settings.sla_recovery_seconds,
                detect_seconds=settings.sla_detect_seconds,
            ),
            autostart=settings.monitor_autostart,
            probe_idle_seconds=settings.probe_idle_seconds,
            thresholds=AlertThresholds(
                slow_warning=settings.alert_slow_warning_seconds,
                slow_critical=settings.alert_slow_critical_seconds,
                failures_warning=settings.alert_failures_warning,
                failures_critical=settings.alert_failures_critical,
                expiry_warning_days=settings.alert_refresh_expiry_warning_days,
                expiry_critical_days=settings.alert_refresh_expiry_critical_days,
            ),
            webhook_url=settings.alert_webhook_url,
        )


@dataclass
class Health:
    """The health parts, built by `build_health`; see the module docstring."""

    options: HealthOptions
    clock: Clock
    store: HealthStore
    table: RealmTable
    alerts: AlertManager
    history: HistoryBuffer
    token_rules: TokenRules
    observer: HealthObserver
    cycle: ProbeCycle
    tick: HousekeepingTick
    backend_up: Callable[[], bool]
    probe: Callable[[str], Awaitable[None]]
    # The read side (summary, dashboard, one realm), added once the parts above exist.
    views: HealthViews = field(init=False)
    business_view: BusinessView = field(init=False)

    async def open(self, *, background: bool = True) -> None:
        """Start the writers; with `background`, the housekeeping tick and (autostart)
        the monitor loop too. Tests driving a ManualClock pass background=False."""
        self.alerts.start()
        self.history.start()
        if background and not self.tick.running:
            with contextlib.suppress(Exception):
                await self.token_rules.refresh(force=True)
            self.tick.start()
            if self.options.autostart:
                await self.cycle.start()

    async def close(self) -> None:
        await self.cycle.stop()
        await self.tick.stop()
        await self.history.stop()
        await self.alerts.close()

    async def flush(self) -> None:
        """Wait until buffered history and alert writes are stored (tests, admin check)."""
        # Alert writes first: storing an alert adds incident times to the history.
        await self.alerts.flush()
        await self.history.flush()

    async def check_now(self, realm_id: str) -> HistoryEntry | None:
        """Probe one realm at once (admin action); returns the check it recorded."""
        await self.probe(realm_id)
        await self.flush()
        recent = await self.store.history(realm_id, since=0.0, limit=20)
        checks = [e for e in recent if e.source == "check"]
        return checks[-1] if checks else None


def build_health(
    options: HealthOptions,
    *,
    store: HealthStore,
    clock: Clock,
    metrics: Metrics,
    sources: HealthSources,
    session: aiohttp.ClientSession | None = None,
    policy: AdmissionPolicy | None = None,
    backend_up: Callable[[], bool] | None = None,
    owner: str | None = None,
) -> Health:
    """Wire the health parts around one realm table and one alert manager."""
    history = HistoryBuffer(store=store, clock=clock, bucket_seconds=options.bucket_seconds)
    alerts = _alert_manager(
        options, store=store, clock=clock, metrics=metrics, session=session, history=history
    )
    table = RealmTable(
        clock=clock, interval=options.interval, history_seconds=options.history_seconds
    )
    token_rules = TokenRules(
        table=table,
        alerts=alerts,
        history=history,
        clock=clock,
        thresholds=options.thresholds,
        token_statuses=sources.token_statuses,
        status_cache_seconds=options.status_cache_seconds,
    )
    traffic = TrafficRules(
        table=table,
        alerts=alerts,
        history=history,
        clock=clock,
        metrics=metrics,
        thresholds=options.thresholds,
    )
    cycle = ProbeCycle(
        table=table,
        alerts=alerts,
        tokens=token_rules,
        store=store,
        clock=clock,
        metrics=metrics,
        load=sources.load,
        probe=sources.probe,
        owner=owner or uuid.uuid4().hex[:12],
        probe_concurrency=options.probe_concurrency,
        idle_seconds=options.probe_idle_seconds,
    )
    health = Health(
        options=options,
        clock=clock,
        store=store,
        table=table,
        alerts=alerts,
        history=history,
        token_rules=token_rules,
        observer=HealthObserver(traffic=traffic, token_rules=token_rules),
        cycle=cycle,
        tick=HousekeepingTick(cycle=cycle, clock=clock, tick_seconds=options.tick_seconds),
        backend_up=backend_up or (lambda: True),
        probe=sources.probe,
    )
    _add_views(health, metrics=metrics, sources=sources, policy=policy)
    return health


def _add_views(
    health: Health, *, metrics: Metrics, sources: HealthSources, policy: AdmissionPolicy | None
) -> None:
    health.views = HealthViews(
        table=health.table,
        alerts=health.alerts,
        tokens=health.token_rules,
        cycle=health.cycle,
        clock=health.clock,
        metrics=metrics,
        store=health.store,
        targets=health.options.targets,
        bucket_seconds=health.options.bucket_seconds,
    )
    health.business_view = BusinessView(
        table=health.table,
        alerts=health.alerts,
        tokens=health.token_rules,
        store=health.store,
        clock=health.clock,
        token_status=sources.token_status,
        load=sources.load,
        policy=policy,
        targets=health.options.targets,
        bucket_seconds=health.options.bucket_seconds,
    )


def _alert_manager(
    options: HealthOptions,
    *,
    store: HealthStore,
    clock: Clock,
    metrics: Metrics,
    session: aiohttp.ClientSession | None,
    history: HistoryBuffer,
) -> AlertManager:
    return AlertManager(
        store=store,
        clock=clock,
        metrics=metrics,
        history=history,
        notifier=_notifier(options, session, clock, metrics),
        history_seconds=options.history_seconds,
    )


def _notifier(
    options: HealthOptions,
    session: aiohttp.ClientSession | None,
    clock: Clock,
    metrics: Metrics,
) -> WebhookNotifier | None:
    if not options.webhook_url:
        return None
    if session is None:
        log.warning("alert_webhook_disabled", reason="no HTTP session was given")
        return None
    return WebhookNotifier(
        url=options.webhook_url,
        session=session,
        clock=clock,
        metrics=metrics,
        base_delay=options.webhook_base_delay,
    )
