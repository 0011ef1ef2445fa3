"""Traffic rules: what one request, stale answer, breaker change or throttle means for health.

These run synchronously inside the `Observer` calls on the request path, so each is O(1):
update the realm's running figures, buffer a history entry, and set or clear the alert
conditions at once (alerts appear within seconds of live traffic). Whether a request says
anything about QBO at all is decided by `classify_outcome`.
"""

from __future__ import annotations

from qbo_gateway.admission.records import BreakerState
from qbo_gateway.clock import Clock
from qbo_gateway.faults import FaultClass
from qbo_gateway.health.alert_rules import AlertThresholds, failures_severity, slow_severity
from qbo_gateway.health.alerts import AlertManager
from qbo_gateway.health.buckets import Counts, latency_bin
from qbo_gateway.health.history_writer import HistoryBuffer
from qbo_gateway.health.stats import RealmStats, RealmTable
from qbo_gateway.health.store_memory import HistoryEntry
from qbo_gateway.metrics import Metrics

_DETAIL = {
    (o, f): f"{o}:{f.value}"
    for o in ("upstream", "cache_hit", "stale", "rejected", "error")
    for f in FaultClass
}


_BREAKER_FIELD = {
    BreakerState.OPEN: "br_open",
    BreakerState.HALF_OPEN: "br_half",
    BreakerState.CLOSED: "br_close",
}


def _counters(
    outcome: str, latency: float, fault: FaultClass | None, verdict: bool | None, probe: bool
) -> Counts:
    """What one request adds to its bucket."""
    counts: Counts = {"req": 1}
    if verdict is not None:
        counts["ok" if verdict else "fail"] = 1
        if probe:
            counts["chk_ok" if verdict else "chk_fail"] = 1
    elif outcome == "error":
        counts["gw_err"] = 1  # answered by the gateway without QBO saying anything
    if fault is not None and fault is not FaultClass.OK:
        counts[f"f_{fault.value}"] = 1
    if outcome == "upstream" and latency > 0:
        counts["lat_ms"] = round(latency * 1000)
        counts[latency_bin(latency)] = 1
    return counts


def classify_outcome(outcome: str, status: int, fault: FaultClass | None) -> bool | None:
    """Did this request show QBO working (True), failing (False), or tell nothing (None)?"""
    if fault is FaultClass.THROTTLE:
        return None
    if outcome == "upstream":
        return not (fault is FaultClass.UPSTREAM_FAILURE or status >= 500)
    if outcome in ("error", "stale"):
        if fault is FaultClass.UPSTREAM_FAILURE or status in (500, 502, 504):
            return False
        return None
    return None  # cache_hit, rejected: QBO was not asked


class TrafficRules:
    """The request-path half of the Observer (token events go to `TokenRules`)."""

    def __init__(
        self,
        *,
        table: RealmTable,
        alerts: AlertManager,
        history: HistoryBuffer,
        clock: Clock,
        metrics: Metrics,
        thresholds: AlertThresholds,
    ) -> None:
        self.table = table
        self.alerts = alerts
        self.history = history
        self.clock = clock
        self.metrics = metrics
        self.thresholds = thresholds

    def request_finished(
        self,
        realm_id: str,
        outcome: str,
        status: int,
        latency: float,
        fault: FaultClass | None,
        probe: bool,
    ) -> None:
        now = self.clock.now()
        verdict = classify_outcome(outcome, status, fault)
        detail = outcome if fault is None else _DETAIL.get((outcome, fault), outcome)
        self.history.count(realm_id, now, _counters(outcome, latency, fault, verdict, probe))
        if probe:
            self.metrics.health_checks.labels(
                result={True: "ok", False: "failure", None: "inconclusive"}[verdict]
            ).inc()
        if verdict is None:
            if probe:
                self.history.add(
                    realm_id, HistoryEntry(now, "check", False, status, latency, detail)
                )
                stats = self.table.stats_for(realm_id)
                stats.last_check_at, stats.last_check_ok = now, False
            return
        stats = self.table.stats_for(realm_id)
        stats.trim(now - self.table.history_seconds)
        went_upstream = outcome == "upstream"
        stats.add(now, verdict, latency if went_upstream else None)
        if probe:
            stats.last_check_at, stats.last_check_ok = now, verdict
        live_ok = verdict and not probe
        source = "check" if probe else "request"
        self.history.add(
            realm_id, HistoryEntry(now, source, verdict, status, latency, detail, live=live_ok)
        )
        if verdict:
            self._succeeded(realm_id, stats, now, live=live_ok)
        else:
            self._failed(realm_id, stats, now)
        if went_upstream:
            self._check_speed(realm_id, stats)

    def _succeeded(self, realm_id: str, stats: RealmStats, now: float, *, live: bool) -> None:
        stats.consecutive_failures = 0
        stats.failure_run_started = None
        stats.last_success_at = now
        if live:
            stats.last_live_success_at = now
        self.alerts.set_condition(realm_id, "consecutive_failures", None)
        if stats.throttled_until is not None and stats.throttled_until <= now:
            stats.throttled_until = None
            self.alerts.set_condition(realm_id, "throttled", None)

    def _failed(self, realm_id: str, stats: RealmStats, now: float) -> None:
        t = self.thresholds
        stats.consecutive_failures += 1
        stats.last_failure_at = now
        if stats.failure_run_started is None:
            stats.failure_run_started = now
        n = stats.consecutive_failures
        self.alerts.set_condition(
            realm_id,
            "consecutive_failures",
            failures_severity(n, t),
            message=f"{n} consecutive failed requests to QuickBooks"
            if n < t.failures_critical
            else f"{t.failures_critical} or more consecutive failed requests to QuickBooks",
            value=float(min(n, t.failures_critical)),
            started_at=stats.failure_run_started,
        )

    def _check_speed(self, realm_id: str, stats: RealmStats) -> None:
        avg = stats.recent_avg()
        severity = slow_severity(avg, self.thresholds)
        if severity is None:
            self.alerts.set_condition(realm_id, "slow_responses", None)
            return
        t = self.thresholds
        limit = t.slow_critical if severity == "critical" else t.slow_warning
        self.alerts.set_condition(
            realm_id,
            "slow_responses",
            severity,
            message=f"QuickBooks responses average over {limit:g} s",
            value=None if avg is None else round(avg, 3),
        )

    def stale_served(self, realm_id: str, *, reason: str, age: float) -> None:
        stats = self.table.stats_for(realm_id)
        stats.last_stale_at = self.clock.now()
        self.history.count(realm_id, stats.last_stale_at, {"stale": 1})
        stats.stale_reason = reason
        self.history.add(
            realm_id, HistoryEntry(stats.last_stale_at, "stale", False, 0, 0.0, reason)
        )

    def breaker_changed(self, realm_id: str, state: BreakerState) -> None:
        stats = self.table.stats_for(realm_id)
        stats.breaker = state
        now = self.clock.now()
        self.history.count(realm_id, now, {_BREAKER_FIELD[state]: 1})
        self.history.add(
            realm_id,
            HistoryEntry(now, "breaker", state is BreakerState.CLOSED, 0, 0.0, state.value),
        )
        if state is BreakerState.OPEN:
            self.alerts.set_condition(
                realm_id,
                "circuit_open",
                "critical",
                message="Circuit open after consecutive failed attempts to QuickBooks "
                "(each retry is an attempt): requests are paused",
                started_at=stats.failure_run_started or now,
            )
        elif state is BreakerState.CLOSED:
            self.alerts.set_condition(realm_id, "circuit_open", None)

    def throttled(self, realm_id: str, *, until: float) -> None:
        stats = self.table.stats_for(realm_id)
        stats.throttled_until = max(until, stats.throttled_until or 0.0)
        stats.last_throttled_at = self.clock.now()
        self.alerts.set_condition(
            realm_id,
            "throttled",
            "warning",
            message="QuickBooks is throttling this realm",
        )
