"""Incident times into the buckets: time to detect, to deliver, to recover, and downtime.

An incident starts with the first failing request or probe of a realm (the `started_at` of
its first outage alert) and lasts while any outage alert of the realm is active. These
times are measured where the events happen, by the one replica that stored them (the one
that raised the alert in the shared store, the one whose webhook delivered it, the one that
resolved it), so a fleet counts each incident once:

- detect: first failure to the incident's first alert being raised (`det:<alert id>`);
- deliver: first failure to the webhook delivering that alert (`dlv:<alert id>`);
- recover: the circuit opening to it closing again (`rec:<alert id>`);
- downtime: the milliseconds of each resolved outage, spread over the buckets it spans.
"""

from __future__ import annotations

from qbo_gateway.health.alert_rules import OUTAGE_KINDS
from qbo_gateway.health.history_writer import HistoryBuffer
from qbo_gateway.health.store_memory import AlertRecord
from qbo_gateway.health.webhook import Notification


class IncidentTimes:
    """Writes incident times through the history writer (never on the request path)."""

    def __init__(self, history: HistoryBuffer) -> None:
        self._history = history
        # Until when each realm's downtime is in the buckets: overlapping outages of one
        # realm (failures, then an open circuit) are counted once.
        self._down_until: dict[str, float] = {}
        self.resolved_count = 0  # outages resolved here (their downtime changes past buckets)

    def down_until(self, realm_id: str) -> float:
        return self._down_until.get(realm_id, 0.0)

    def raised(self, alert: AlertRecord) -> None:
        self._since_first_failure("det", alert, alert.raised_at)

    def delivered(self, note: Notification, at: float) -> None:
        if note.event == "raised":
            self._since_first_failure("dlv", note.alert, at)

    def resolved(self, alert: AlertRecord) -> None:
        if alert.kind not in OUTAGE_KINDS or alert.resolved_at is None:
            return
        start = max(alert.started_at, self.down_until(alert.realm_id))
        self.resolved_count += 1
        if alert.resolved_at > start:
            self._history.count_span(alert.realm_id, start, alert.resolved_at, "down_ms")
            self._down_until[alert.realm_id] = alert.resolved_at
        if alert.kind == "circuit_open":
            ms = max(0, round((alert.resolved_at - alert.raised_at) * 1000))
            self._history.count(alert.realm_id, alert.resolved_at, {f"rec:{alert.id}": ms})

    def forget(self, realm_id: str) -> None:
        self._down_until.pop(realm_id, None)

    def _since_first_failure(self, prefix: str, alert: AlertRecord, at: float) -> None:
        if alert.extra.get("opens_incident"):
            ms = max(0, round((at - alert.started_at) * 1000))
            self._history.count(alert.realm_id, at, {f"{prefix}:{alert.id}": ms})
