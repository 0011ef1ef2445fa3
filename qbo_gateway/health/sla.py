"""SLA figures against their targets: uptime, response times, incidents, MTTR, alert delay.

Downtime is measured from outage alerts (not from individual failed requests): a realm is
down from the moment an outage condition started until it resolved, with overlapping
outages merged so they are not counted twice. The dashboard (all realms) and the business
view (one realm) report the same block, built here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qbo_gateway.health.alert_rules import OUTAGE_KINDS
from qbo_gateway.health.alerts import AlertManager
from qbo_gateway.health.store_memory import AlertRecord

SLA_TARGETS: dict[str, float] = {
    "uptime_ratio": 0.999,
    "avg_response_seconds": 2.0,
    "mttr_seconds": 300.0,
    "detection_to_alert_seconds": 60.0,
}


@dataclass
class Incidents:
    downtime: float = 0.0
    count: int = 0
    recoveries: list[float] = field(default_factory=list)


def merge_incidents(alerts: list[AlertRecord], start: float, now: float) -> Incidents:
    """Outage alerts of one realm as merged intervals clipped to [start, now]."""
    if len(alerts) == 1:  # the common case, kept cheap for dashboards of many realms
        a = alerts[0]
        end = a.resolved_at if a.resolved_at is not None else now
        if end < start:
            return Incidents()
        return Incidents(
            downtime=max(0.0, min(end, now) - max(a.started_at, start)),
            count=1,
            recoveries=[end - a.started_at] if end < now else [],
        )
    spans = sorted(
        (a.started_at, a.resolved_at if a.resolved_at is not None else now) for a in alerts
    )
    out = Incidents()
    cur_start: float | None = None
    cur_end = 0.0
    merged: list[tuple[float, float]] = []
    for s, e in spans:
        if cur_start is None or s > cur_end:
            if cur_start is not None:
                merged.append((cur_start, cur_end))
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    if cur_start is not None:
        merged.append((cur_start, cur_end))
    for s, e in merged:
        if e < start:
            continue
        out.count += 1
        out.downtime += max(0.0, min(e, now) - max(s, start))
        if e < now:
            out.recoveries.append(e - s)
    return out


def incidents_by_realm(alerts: AlertManager, start: float, now: float) -> dict[str, Incidents]:
    grouped: dict[str, list[AlertRecord]] = {}
    for alert in alerts.active() + alerts.recent_resolved():
        if alert.kind in OUTAGE_KINDS:
            grouped.setdefault(alert.realm_id, []).append(alert)
    return {r: merge_incidents(a, start, now) for r, a in grouped.items()}


def realm_incidents(alerts: AlertManager, realm_id: str, start: float, now: float) -> Incidents:
    outage = [
        a
        for a in alerts.active() + alerts.recent_resolved()
        if a.realm_id == realm_id and a.kind in OUTAGE_KINDS
    ]
    return merge_incidents(outage, start, now)


def uptime(incidents: Incidents | None, span: float) -> float:
    """Share of `span` (the window so far) without a merged outage."""
    if incidents is None or span <= 0:
        return 1.0
    return max(0.0, 1.0 - incidents.downtime / span)


def alert_delay(alerts: AlertManager, now: float, history_seconds: float) -> float | None:
    """The worst detection-to-delivery delay within the window."""
    notifier = alerts.notifier
    if notifier is not None:
        cutoff = now - history_seconds
        delays = [d for at, d in notifier.delivery_delays if at >= cutoff]
        return max(delays) if delays else None
    # Without a webhook an alert is "delivered" when raised: in process, at once.
    return 0.0 if alerts.raised_delays else None


def _target(value: float | None, target: float, *, higher_is_better: bool) -> dict[str, Any]:
    if value is None:
        return {"value": None, "target": target, "met": None}
    met = value >= target if higher_is_better else value < target
    return {"value": round(value, 6), "target": target, "met": met}


def sla_block(
    *,
    uptime: float,
    avg: float | None,
    p95: float | None,
    incidents: int,
    recoveries: list[float],
    alert_delay: float | None,
    ok: int,
    failed: int,
) -> dict[str, Any]:
    mttr = sum(recoveries) / len(recoveries) if recoveries else None
    return {
        "uptime_ratio": round(uptime, 6),
        "avg_response_seconds": None if avg is None else round(avg, 4),
        "p95_response_seconds": None if p95 is None else round(p95, 4),
        "incidents": incidents,
        "mttr_seconds": None if mttr is None else round(mttr, 1),
        "success_ratio": round(ok / (ok + failed), 6) if ok + failed else None,
        "targets": {
            "uptime_ratio": _target(
                round(uptime, 6), SLA_TARGETS["uptime_ratio"], higher_is_better=True
            ),
            "avg_response_seconds": _target(
                avg, SLA_TARGETS["avg_response_seconds"], higher_is_better=False
            ),
            "mttr_seconds": _target(mttr, SLA_TARGETS["mttr_seconds"], higher_is_better=False),
            "detection_to_alert_seconds": _target(
                alert_delay,
                SLA_TARGETS["detection_to_alert_seconds"],
                higher_is_better=False,
            ),
        },
    }
