"""The all-realm views: `/health/summary` and `/health/dashboard`.

Both read only the precomputed figures of the in-memory realm table and the active
alerts, so they cost O(realms) with cheap per-realm work even at 10,000 realms. The
dashboard computes totals and the SLA block over every realm but builds rows (worst first)
only for the asked page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from qbo_gateway.clock import Clock
from qbo_gateway.health.alert_rules import alert_json, iso
from qbo_gateway.health.alerts import AlertManager
from qbo_gateway.health.buckets import Series, total
from qbo_gateway.health.fleet_history import FleetHistory
from qbo_gateway.health.grading import (
    STATUS_RANK,
    overall_status,
    set_realm_gauge,
    status_counts,
)
from qbo_gateway.health.probe_cycle import ProbeCycle
from qbo_gateway.health.sla import (
    Incidents,
    SlaTargets,
    Window,
    incidents_by_realm,
    overlap,
    running_outages,
    sla_block,
)
from qbo_gateway.health.stats import RealmTable
from qbo_gateway.health.store_memory import HealthStore
from qbo_gateway.health.token_rules import TokenRules
from qbo_gateway.metrics import Metrics

_DASHBOARD_ROWS = 500  # default page: the worst realms first; ?limit= asks for more


class HealthViews:
    """Builds the summary and dashboard bodies (JSON-ready dicts)."""

    def __init__(
        self,
        *,
        table: RealmTable,
        alerts: AlertManager,
        tokens: TokenRules,
        cycle: ProbeCycle,
        clock: Clock,
        metrics: Metrics,
        store: HealthStore,
        targets: SlaTargets,
        bucket_seconds: float,
    ) -> None:
        self._fleet = FleetHistory(
            store=store,
            clock=clock,
            incidents=alerts.incidents,
            history_seconds=table.history_seconds,
            bucket_seconds=bucket_seconds,
        )
        self.targets = targets
        self.bucket_seconds = bucket_seconds
        self.table = table
        self.alerts = alerts
        self.tokens = tokens
        self.cycle = cycle
        self.clock = clock
        self.metrics = metrics
        # App-wide sections other packages add (the read economy's `coreplus`).
        self._sections: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {}

    def add_section(self, name: str, build: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """A section of the summary and the dashboard that another package builds."""
        self._sections[name] = build

    async def _extra(self) -> dict[str, Any]:
        return {name: await build() for name, build in self._sections.items()}

    async def summary(self) -> dict[str, Any]:
        await self.tokens.refresh_quietly()
        now = self.clock.now()
        counts, _ = status_counts(self.table, self.alerts, now)
        set_realm_gauge(self.metrics, counts)
        active = sorted(self.alerts.active(), key=lambda a: a.raised_at, reverse=True)
        by_severity = {"warning": 0, "critical": 0}
        for alert in active:
            by_severity[alert.severity] = by_severity.get(alert.severity, 0) + 1
        return {
            "status": overall_status(counts),
            "generated_at": iso(now),
            "realms": {"total": len(self.table.realms), **counts},
            "monitor": await self.cycle.monitor_report(),
            "alerts": {
                "active": len(active),
                "by_severity": by_severity,
                "unacknowledged": sum(1 for a in active if a.state == "active"),
                "items": [alert_json(a) for a in active[:100]],
                "truncated": len(active) > 100,
            },
            **await self._extra(),
        }

    async def fleet_history(self) -> tuple[Series, Window]:
        """The fleet's buckets over the history window (shared by every replica)."""
        return await self._fleet.read()

    async def dashboard(
        self, *, status: str | None = None, limit: int | None = None, offset: int = 0
    ) -> dict[str, Any]:
        """Totals and SLA over every realm; rows (worst first) only for the asked page."""
        await self.tokens.refresh_quietly()
        table = self.table
        now = self.clock.now()
        counts, states = status_counts(table, self.alerts, now)
        selected = sorted(
            (STATUS_RANK[state], realm_id, state)
            for realm_id, state in states.items()
            if status is None or state == status
        )
        limit = _DASHBOARD_ROWS if limit is None else limit
        incidents = incidents_by_realm(self.alerts, table.window_start(now), now)
        rows = [
            self._row(realm_id, state, incidents.get(realm_id), now)
            for _, realm_id, state in selected[offset : offset + limit]
        ]
        sla = await self._fleet_sla(len(table.realms))
        return {
            "generated_at": iso(now),
            "status": overall_status(counts),
            "totals": {
                "realms": len(table.realms),
                **counts,
                "requests_ok": sla["requests"] - sla["failed_requests"],
                "requests_failed": sla["failed_requests"],
            },
            "alerts": self._alert_counts(),
            "sla": sla,
            "monitor": await self.cycle.monitor_report(),
            "realms": rows,
            "realms_total": len(selected),
            "offset": offset,
            "limit": limit,
            **await self._extra(),
        }

    async def _fleet_sla(self, realms: int) -> dict[str, Any]:
        series, window = await self.fleet_history()
        since = window.observed_since(series)
        outages = running_outages(self.alerts)
        if outages:
            since = min(since if since is not None else window.now, *outages)
        start = window.start if since is None else max(window.start, since)
        return sla_block(
            total(series, window.first, window.last),
            span=window.now - start,
            down_now=overlap(outages, start, window.now),
            targets=self.targets,
            realms=realms,
            webhook=self.alerts.notifier is not None,
        )

    def _alert_counts(self) -> dict[str, Any]:
        active = self.alerts.active()
        by_kind: dict[str, int] = {}
        by_severity = {"warning": 0, "critical": 0}
        for alert in active:
            by_kind[alert.kind] = by_kind.get(alert.kind, 0) + 1
            by_severity[alert.severity] = by_severity.get(alert.severity, 0) + 1
        return {"active": len(active), "by_severity": by_severity, "by_kind": by_kind}

    def _row(
        self, realm_id: str, state: str, incidents: Incidents | None, now: float
    ) -> dict[str, Any]:
        stats = self.table.stats.get(realm_id)
        token = self.table.tokens.get(realm_id)
        avg = p95 = None
        if stats is not None:
            avg, p95 = stats.avg_latency(), stats.p95_latency()
        return {
            "realm_id": realm_id,
            "status": state,
            "breaker": stats.breaker.value if stats else "closed",
            "consecutive_failed_requests": stats.consecutive_failures if stats else 0,
            "last_success_at": iso(stats.last_success_at) if stats else None,
            "last_check_at": iso(stats.last_check_at) if stats else None,
            "avg_response_seconds": None if avg is None else round(avg, 4),
            "p95_response_seconds": None if p95 is None else round(p95, 4),
            "uptime_ratio": _row_uptime(incidents, now - self.table.window_start(now)),
            "refresh_expires_at": iso(
                _earliest(token.refresh_expires_at, token.refresh_hard_expires_at)
            )
            if token
            else None,
            "needs_reconnect": bool(token and token.needs_reconnect),
            "alerts": sorted(self.alerts.active_for(realm_id)),
        }


def _row_uptime(incidents: Incidents | None, span: float) -> float:
    if incidents is None or span <= 0:
        return 1.0
    return round(max(0.0, 1.0 - incidents.downtime / span), 6)


def _earliest(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None
