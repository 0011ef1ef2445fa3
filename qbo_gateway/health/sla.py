"""SLA figures measured from the history buckets, each against its target.

Every figure is a measurement over the history window, and each target says `met` true or
false (null only when nothing was measured yet): uptime (downtime from outage alerts, in
the buckets once resolved, plus the outage still running), average and p95 response time
(the buckets' latency sum and histogram), time to detect and to deliver (per incident,
worst in the window), and time to recover (circuit open to closed, mean over the window).
The dashboard (the fleet's buckets) and the business view (one realm's) report the same
block, built here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qbo_gateway.health.alert_rules import OUTAGE_KINDS
from qbo_gateway.health.alerts import AlertManager
from qbo_gateway.health.buckets import Series, Totals, bucket_of
from qbo_gateway.health.store_memory import AlertRecord


@dataclass(frozen=True)
class SlaTargets:
    uptime_ratio: float = 0.999
    avg_response_seconds: float = 2.0
    recovery_seconds: float = 300.0
    detect_seconds: float = 60.0


@dataclass(frozen=True)
class Window:
    """The history window in bucket numbers: first..last, the newest being `now`'s."""

    first: int
    last: int
    width: float
    now: float

    @classmethod
    def ending(cls, now: float, *, history: float, width: float) -> Window:
        # Only buckets that start after `now - history`: it covers `history`, no more.
        first = int((now - history) // width) + 1
        return cls(first=first, last=bucket_of(now, width), width=width, now=now)

    @property
    def start(self) -> float:
        return self.first * self.width

    def observed_since(self, series: Series) -> float | None:
        """Start of the first bucket holding anything (None: nothing measured yet)."""
        return min(series) * self.width if series else None


def outage_begins(alerts: AlertManager, realm_id: str) -> float | None:
    """When the realm's running outage began, past what is already in its buckets."""
    starts = [a.started_at for k, a in alerts.active_for(realm_id).items() if k in OUTAGE_KINDS]
    if not starts:
        return None
    return max(min(starts), alerts.incidents.down_until(realm_id))


def running_outages(alerts: AlertManager) -> list[float]:
    begins = (outage_begins(alerts, realm_id) for realm_id in alerts.realms_with_alerts())
    return [b for b in begins if b is not None]


def overlap(begins: list[float], start: float, end: float) -> float:
    """Seconds of running outages (each from its begin to `end`) inside [start, end]."""
    return sum(max(0.0, end - max(b, start)) for b in begins)


def uptime(totals: Totals, down_now: float, span: float, realms: int = 1) -> float | None:
    if span <= 0 or realms <= 0:
        return None
    down = totals.get("down_ms") / 1000 + down_now
    return max(0.0, 1.0 - down / (span * realms))


def _target(value: float | None, target: float, *, higher_is_better: bool) -> dict[str, Any]:
    if value is None:
        return {"value": None, "target": target, "met": None}
    met = value >= target if higher_is_better else value <= target
    return {"value": round(value, 6), "target": target, "met": met}


def _times(ms: list[int]) -> dict[str, Any]:
    return {
        "worst": max(ms) / 1000 if ms else None,
        "average": round(sum(ms) / len(ms) / 1000, 3) if ms else None,
        "count": len(ms),
    }


def sla_block(
    totals: Totals,
    *,
    span: float,
    down_now: float,
    targets: SlaTargets,
    realms: int = 1,
    webhook: bool = False,
) -> dict[str, Any]:
    """The SLA figures of `totals` (a realm's or the fleet's window) against `targets`."""
    ratio = uptime(totals, down_now, span, realms)
    avg = totals.avg_latency()
    ok, failed = totals.get("ok"), totals.get("fail")
    recover = _times(totals.recover_ms)
    detect = _times(totals.detect_ms)
    deliver = _times(totals.deliver_ms)
    block: dict[str, Any] = {
        "window_seconds": round(max(0.0, span), 1),
        "uptime_ratio": None if ratio is None else round(ratio, 6),
        "downtime_seconds": round(totals.get("down_ms") / 1000 + down_now, 1),
        "requests": totals.get("req"),
        "failed_requests": failed,
        "success_ratio": round(ok / (ok + failed), 6) if ok + failed else None,
        "avg_response_seconds": None if avg is None else round(avg, 4),
        "p95_response_seconds": totals.p95_latency(),
        "incidents": detect["count"],
        "mttr_seconds": recover["average"],
        "time_to_detect_seconds": detect,
        "time_to_recover_seconds": recover,
        "targets": {
            "uptime_ratio": _target(ratio, targets.uptime_ratio, higher_is_better=True),
            "avg_response_seconds": _target(
                avg, targets.avg_response_seconds, higher_is_better=False
            ),
            "time_to_recover_seconds": _target(
                recover["average"], targets.recovery_seconds, higher_is_better=False
            ),
            "time_to_detect_seconds": _target(
                detect["worst"], targets.detect_seconds, higher_is_better=False
            ),
        },
    }
    if webhook:
        block["time_to_deliver_seconds"] = deliver
        block["targets"]["time_to_deliver_seconds"] = _target(
            deliver["worst"], targets.detect_seconds, higher_is_better=False
        )
    return block


@dataclass
class Incidents:
    """A realm's outage alerts merged into intervals (this replica's view of the alerts);
    the dashboard's per-realm rows use it, since reading every realm's buckets would not
    fit a dashboard's time budget."""

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
