"""The alert lifecycle: one alert per realm and kind while its condition lasts.

`AlertManager.set_condition` is the one lifecycle entry point: called synchronously from
the request path, it raises an alert the first time a condition holds, changes its
severity while it lasts, and resolves it when the condition clears. The decision is made in
process at once; storing (possibly in Redis) and notifying (`webhook`) happen in a
background task, so an alert never blocks or fails a request. Kinds, thresholds and rules
live in `alert_rules`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass, replace

import structlog

from qbo_gateway.clock import Clock
from qbo_gateway.health.alert_rules import OUTAGE_KINDS
from qbo_gateway.health.history_writer import HistoryBuffer
from qbo_gateway.health.incident_times import IncidentTimes
from qbo_gateway.health.store_memory import SEVERITY_RANK, AlertRecord, HealthStore, Severity
from qbo_gateway.health.webhook import Notification, WebhookNotifier
from qbo_gateway.logs import failure
from qbo_gateway.metrics import Metrics
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.workers import DrainWorker

log = structlog.get_logger(__name__)


@dataclass
class _Op:
    kind: str  # upsert | resolve | sync
    alert: AlertRecord | None = None
    realm_id: str = ""
    alert_kind: str = ""
    at: float = 0.0
    detected_at: float = 0.0


class AlertManager:
    """One alert per (realm, kind) while its condition lasts; decided in process at once.

    `_active` is this replica's view of every active alert (its own decisions at once,
    other replicas' at each `sync`). Store writes run in order in one background task.
    """

    def __init__(
        self,
        *,
        store: HealthStore,
        clock: Clock,
        metrics: Metrics,
        history: HistoryBuffer,
        notifier: WebhookNotifier | None = None,
        history_seconds: float = 86400.0,
        keep_resolved: int = 10000,
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self.notifier = notifier
        self.incidents = IncidentTimes(history)
        if notifier is not None:
            notifier.on_delivered = self.incidents.delivered
        self._history_seconds = history_seconds
        self._keep_resolved = keep_resolved
        self._severity_counts: dict[str, int] = {"warning": 0, "critical": 0}
        self._active: dict[tuple[str, str], AlertRecord] = {}
        self._by_realm: dict[str, dict[str, AlertRecord]] = {}
        self._resolved: deque[AlertRecord] = deque(maxlen=keep_resolved)
        self._ops: deque[_Op] = deque()
        self._worker = DrainWorker(
            has_work=lambda: bool(self._ops), step=self._apply_next, on_error=_store_failed
        )

    # -- the decision (sync, request path) --

    def set_condition(
        self,
        realm_id: str,
        kind: str,
        severity: Severity | None,
        *,
        message: str = "",
        value: float | None = None,
        started_at: float | None = None,
    ) -> None:
        key = (realm_id, kind)
        current = self._active.get(key)
        now = self._clock.now()
        if severity is None:
            if current is not None:
                self._forget(key)
                self._resolved.append(
                    replace(current, state="resolved", resolved_at=now, updated_at=now)
                )
                self._enqueue(_Op("resolve", realm_id=realm_id, alert_kind=kind, at=now))
            return
        if current is not None:
            if current.severity == severity and current.message == message:
                return
            updated = replace(
                current, severity=severity, message=message, value=value, updated_at=now
            )
            self._remember(updated)
            self._enqueue(_Op("upsert", alert=updated, detected_at=now))
            return
        opens = kind in OUTAGE_KINDS and not OUTAGE_KINDS.intersection(self.active_for(realm_id))
        alert = AlertRecord(
            id=uuid.uuid4().hex[:16],
            realm_id=realm_id,
            kind=kind,
            severity=severity,
            state="active",
            message=message,
            started_at=started_at if started_at is not None else now,
            raised_at=now,
            updated_at=now,
            value=value,
            extra={"opens_incident": True} if opens else {},
        )
        self._remember(alert)
        log.warning(
            "alert_raised", realm_id=realm_id, kind=kind, severity=severity, alert_id=alert.id
        )
        self._enqueue(_Op("upsert", alert=alert, detected_at=now))

    def clear_realm(self, realm_id: str) -> None:
        for kind in list(self._by_realm.get(realm_id, {})):
            self.set_condition(realm_id, kind, None)

    # -- views (sync, O(1) or O(active)) --

    def active_for(self, realm_id: str) -> dict[str, AlertRecord]:
        return self._by_realm.get(realm_id, {})

    def active(self) -> list[AlertRecord]:
        return list(self._active.values())

    def realms_with_alerts(self) -> dict[str, dict[str, AlertRecord]]:
        return self._by_realm

    def recent_resolved(self) -> list[AlertRecord]:
        return list(self._resolved)

    # -- async API (ops routes) --

    async def list_alerts(self) -> list[AlertRecord]:
        try:
            stored = await self._store.alerts()
        except StateUnavailable:
            stored = self.active() + self.recent_resolved()
        # Decisions not yet written still show, so the API never lags the request path.
        seen = {(a.realm_id, a.kind) for a in stored if a.active}
        pending = [a for k, a in self._active.items() if k not in seen]
        out = stored + pending
        out.sort(key=lambda a: a.raised_at, reverse=True)
        return out

    async def ack(self, alert_id: str, *, by: str = "admin") -> AlertRecord | None:
        await self.flush()
        acked = await self._store.ack_alert(alert_id, at=self._clock.now(), by=by)
        if acked is not None and acked.active:
            current = self._active.get((acked.realm_id, acked.kind))
            if current is not None and current.id == acked.id:
                self._remember(acked)
        if acked is not None:
            log.info("alert_acknowledged", alert_id=alert_id, kind=acked.kind)
        return acked

    async def sync(self) -> None:
        """Adopt the shared view (other replicas' alerts) and prune old resolved ones."""
        self._enqueue(_Op("sync"))
        await self.flush()

    async def flush(self) -> None:
        """Wait until every queued store write is done (or run them inline if not started)."""
        if self._worker.running:
            await self._worker.drained()
            return
        while self._ops:
            await self._apply_next()

    def start(self) -> None:
        self._worker.start()
        if self.notifier is not None:
            self.notifier.start()

    async def close(self) -> None:
        # The store write in hand finishes before the worker is cancelled.
        await self._worker.stop()
        if self.notifier is not None:
            await self.notifier.close()

    # -- internals --

    def _remember(self, alert: AlertRecord) -> None:
        key = (alert.realm_id, alert.kind)
        old = self._active.get(key)
        self._active[key] = alert
        self._by_realm.setdefault(alert.realm_id, {})[alert.kind] = alert
        if old is None or old.severity != alert.severity:
            if old is not None:
                self._count(old.severity, -1)
            self._count(alert.severity, 1)

    def _forget(self, key: tuple[str, str]) -> None:
        old = self._active.pop(key, None)
        kinds = self._by_realm.get(key[0])
        if kinds is not None:
            kinds.pop(key[1], None)
            if not kinds:
                del self._by_realm[key[0]]
        if old is not None:
            self._count(old.severity, -1)

    def _count(self, severity: str, delta: int) -> None:
        # Kept incrementally: a change costs O(1) however many alerts are active.
        self._severity_counts[severity] = self._severity_counts.get(severity, 0) + delta
        self._metrics.alerts_active.labels(severity=severity).set(self._severity_counts[severity])

    def _enqueue(self, op: _Op) -> None:
        self._ops.append(op)
        self._worker.wake()

    async def _apply_next(self) -> None:
        op = self._ops.popleft()
        try:
            await self._apply(op)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad write must not stop alerts
            log.error("alert_store_failed", op=op.kind, **failure(exc))

    async def _apply(self, op: _Op) -> None:
        if op.kind == "upsert" and op.alert is not None:
            result = await self._store.upsert_alert(op.alert)
            current = self._active.get((op.alert.realm_id, op.alert.kind))
            if current is not None and current.id == op.alert.id and result.alert.id != current.id:
                # Another replica raised this episode first: adopt its id.
                self._remember(result.alert)
            if result.created:
                self.incidents.raised(result.alert)
                self._notify("raised", result.alert, op.detected_at)
            elif result.changed and SEVERITY_RANK.get(result.alert.severity, 0) >= 2:
                self._notify("escalated", result.alert, op.detected_at)
        elif op.kind == "resolve":
            resolved = await self._store.resolve_alert(op.realm_id, op.alert_kind, at=op.at)
            if resolved is not None:
                log.info("alert_resolved", realm_id=op.realm_id, kind=op.alert_kind)
                self.incidents.resolved(resolved)
                self._notify("resolved", resolved, op.at)
        elif op.kind == "sync":
            await self._adopt_shared()

    async def _adopt_shared(self) -> None:
        now = self._clock.now()
        await self._store.prune(
            resolved_before=now - self._history_seconds, keep_resolved=self._keep_resolved
        )
        shared = await self._store.alerts()
        pending = {(op.alert.realm_id, op.alert.kind) for op in self._ops if op.alert is not None}
        fresh = {(a.realm_id, a.kind): a for a in shared if a.active}
        for key in list(self._active):
            if key not in fresh and key not in pending:
                self._forget(key)
        for key, alert in fresh.items():
            if key not in pending and self._active.get(key) != alert:
                self._remember(alert)
        self._resolved.clear()
        self._resolved.extend(
            sorted((a for a in shared if not a.active), key=lambda a: a.resolved_at or 0.0)
        )

    def _notify(self, event: str, alert: AlertRecord, detected_at: float) -> None:
        if self.notifier is not None:
            self.notifier.submit(Notification(event, alert, detected_at))


def _store_failed(exc: Exception) -> None:
    log.error("alert_store_failed", **failure(exc))
