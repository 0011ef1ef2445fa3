"""Alert kinds, thresholds and rules, and the public shape of an alert.

Rules are small pure functions (figure in, severity or None out) so every threshold is
tested with plain numbers; the lifecycle (`alerts.AlertManager`) and webhook delivery
(`webhook`) build on them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from qbo_gateway.health.store_memory import AlertRecord, Severity

AlertKind = Literal[
    "consecutive_failures",
    "slow_responses",
    "circuit_open",
    "reconnect_required",
    "refresh_failing",
    "refresh_token_expiring",
    "throttled",
    "coreplus_usage",
    "coreplus_projection",
    "token_store_rollback",
]
# The realm id of an alert about the whole app (the month's metered reads), not one realm.
APP_WIDE = "*"
# What an alert's `value` counts, said in the API: the breaker counts failed attempts (a
# retried request is several), this alert counts failed requests.
VALUE_UNITS = {
    "consecutive_failures": "failed requests",
    "slow_responses": "seconds",
    "refresh_token_expiring": "days left",
}
# Kinds that mean the realm cannot reach QuickBooks: they make incidents (uptime, MTTR).
OUTAGE_KINDS = frozenset({"consecutive_failures", "circuit_open", "reconnect_required"})

_DAY = 86400.0


@dataclass(frozen=True)
class AlertThresholds:
    slow_warning: float = 5.0
    slow_critical: float = 10.0
    failures_warning: int = 2
    failures_critical: int = 5
    expiry_warning_days: float = 14.0
    expiry_critical_days: float = 3.0


def failures_severity(consecutive: int, t: AlertThresholds) -> Severity | None:
    if consecutive >= t.failures_critical:
        return "critical"
    if consecutive >= t.failures_warning:
        return "warning"
    return None


def slow_severity(seconds: float | None, t: AlertThresholds) -> Severity | None:
    if seconds is None:
        return None
    if seconds > t.slow_critical:
        return "critical"
    if seconds > t.slow_warning:
        return "warning"
    return None


def expiry_severity(seconds_left: float | None, t: AlertThresholds) -> Severity | None:
    if seconds_left is None:
        return None
    if seconds_left < t.expiry_critical_days * _DAY:
        return "critical"
    if seconds_left < t.expiry_warning_days * _DAY:
        return "warning"
    return None


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    # strftime on gmtime is twice as fast as datetime.isoformat; dashboards format ~30k.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def alert_json(alert: AlertRecord) -> dict[str, Any]:
    """The public shape of an alert (health API and webhook)."""
    return {
        "id": alert.id,
        "realm_id": alert.realm_id,
        "kind": alert.kind,
        "severity": alert.severity,
        "state": alert.state,
        "message": alert.message,
        "value": alert.value,
        "value_counts": VALUE_UNITS.get(alert.kind),
        "started_at": iso(alert.started_at),
        "raised_at": iso(alert.raised_at),
        "updated_at": iso(alert.updated_at),
        "acknowledged_at": iso(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by,
        "resolved_at": iso(alert.resolved_at),
    }
