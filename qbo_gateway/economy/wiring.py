"""The read economy's builder: the meter from settings, its alerts and its health section,
and the monitor's probe budget (handed to the health package's probe cycle).

App-wide alerts go through the health package's one alert lifecycle under the realm id
`APP_WIDE`, so they are stored, listed, acknowledged and sent to the webhook like any other.
"""

from __future__ import annotations

from typing import Any

from qbo_gateway.clock import Clock
from qbo_gateway.economy.guard import ReadGuard
from qbo_gateway.economy.meter import Meter, MeterOptions
from qbo_gateway.economy.probe_budget import ProbeBudget
from qbo_gateway.economy.records import MeterBackend, zone_named
from qbo_gateway.economy.report import month_report
from qbo_gateway.health.alert_rules import APP_WIDE
from qbo_gateway.health.store_memory import Severity
from qbo_gateway.health.wiring import Health
from qbo_gateway.metrics import Metrics
from qbo_gateway.settings import Settings


def build_meter(
    settings: Settings, backend: MeterBackend, *, clock: Clock, metrics: Metrics, health: Health
) -> Meter:
    def alert(kind: str, severity: Severity | None, message: str, value: float) -> None:
        health.alerts.set_condition(APP_WIDE, kind, severity, message=message, value=value)

    meter = Meter(
        backend,
        clock=clock,
        metrics=metrics,
        options=MeterOptions(
            monthly_limit=settings.coreplus_monthly_limit,
            zone=zone_named(settings.coreplus_timezone),
        ),
        alert=alert,
    )

    async def section() -> dict[str, Any]:
        return await month_report(meter, guard=settings.coreplus_guard)

    health.views.add_section("coreplus", section)
    health.cycle.budget = ProbeBudget(
        meter,
        store=health.store,
        clock=clock,
        share=settings.probe_budget_share,
        interval=settings.monitor_interval_seconds,
    )
    meter.start()
    return meter


def read_guard(settings: Settings, meter: Meter, *, metrics: Metrics) -> ReadGuard:
    return ReadGuard(meter, settings.coreplus_guard, metrics=metrics)
