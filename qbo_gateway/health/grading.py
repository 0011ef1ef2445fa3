"""One word per realm and for the whole gateway: healthy, degraded, unhealthy, needs_reconnect.

Every view (summary, dashboard, business, admin check), the realm gauge and the probe
cycle grade realms the same way, so the rule lives here once: a pure function of the
in-memory realm table and the active alerts.
"""

from __future__ import annotations

from qbo_gateway.admission.records import BreakerState
from qbo_gateway.health.alerts import AlertManager
from qbo_gateway.health.stats import RealmTable
from qbo_gateway.metrics import Metrics

STATUSES = ("healthy", "degraded", "unhealthy", "needs_reconnect", "refresh_outcome_unknown")
STATUS_RANK = {
    "needs_reconnect": 0,
    "unhealthy": 1,
    "refresh_outcome_unknown": 2,
    "degraded": 3,
    "healthy": 4,
}


def realm_status(table: RealmTable, alerts: AlertManager, realm_id: str, now: float) -> str:
    token = table.tokens.get(realm_id)
    active = alerts.active_for(realm_id)
    stats = table.stats.get(realm_id)
    if (token is not None and token.needs_reconnect) or "reconnect_required" in active:
        return "needs_reconnect"
    if token is not None and token.refresh_outcome_unknown:
        return "refresh_outcome_unknown"  # never "healthy" until a check says
    if "circuit_open" in active or (stats is not None and stats.breaker is BreakerState.OPEN):
        return "unhealthy"
    failures = active.get("consecutive_failures")
    if failures is not None and failures.severity == "critical":
        return "unhealthy"
    if (
        token is not None
        and token.access_expires_at <= now
        and (token.refresh_failing or "refresh_failing" in active)
    ):
        return "unhealthy"
    for kind, alert in active.items():
        if kind != "refresh_token_expiring" or alert.severity == "critical":
            return "degraded"
    if stats is not None and (
        stats.breaker is BreakerState.HALF_OPEN
        or (stats.last_stale_at is not None and stats.last_stale_at > now - table.interval)
    ):
        return "degraded"
    return "healthy"


def status_counts(
    table: RealmTable, alerts: AlertManager, now: float
) -> tuple[dict[str, int], dict[str, str]]:
    counts = dict.fromkeys(STATUSES, 0)
    by_realm: dict[str, str] = {}
    with_alerts = alerts.realms_with_alerts()
    for realm_id in table.realms:
        # Most realms have no alert and nothing odd: said "healthy" without the full rule
        # (the same answer, a third of the cost: summaries grade 10,000 realms).
        if realm_id in with_alerts or not _plainly_healthy(table, realm_id, now):
            status = realm_status(table, alerts, realm_id, now)
        else:
            status = "healthy"
        counts[status] += 1
        by_realm[realm_id] = status
    return counts, by_realm


def _plainly_healthy(table: RealmTable, realm_id: str, now: float) -> bool:
    token = table.tokens.get(realm_id)
    if token is not None and (
        token.needs_reconnect
        or token.refresh_outcome_unknown
        or (token.refresh_failing and token.access_expires_at <= now)
    ):
        return False
    stats = table.stats.get(realm_id)
    return stats is None or (
        stats.breaker is BreakerState.CLOSED
        and (stats.last_stale_at is None or stats.last_stale_at <= now - table.interval)
    )


def set_realm_gauge(metrics: Metrics, counts: dict[str, int]) -> None:
    for status, n in counts.items():
        metrics.realms.labels(status=status).set(n)


def update_realm_gauge(
    table: RealmTable, alerts: AlertManager, metrics: Metrics, now: float
) -> dict[str, int]:
    counts, _ = status_counts(table, alerts, now)
    set_realm_gauge(metrics, counts)
    return counts


def overall_status(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    down = counts["unhealthy"] + counts["needs_reconnect"]
    if total and down * 2 >= total:
        return "unhealthy"
    if down or counts["degraded"] or counts["refresh_outcome_unknown"]:
        return "degraded"
    return "healthy"
