"""Health monitoring: what the request path reports, history, SLA, and the probe loop.

`HealthMonitor` is the gateway's `Observer`. Each event updates a small per-realm aggregate
in place and runs the alert rules at once (alerts appear within seconds of live traffic);
history writes are buffered and flushed by a background task, so nothing here blocks or
fails a request. The monitor loop probes only realms that had no successful live request
within the interval (a probe is a billed QBO read: live traffic already proves a busy realm
healthy), through the same admission path as proxied calls, one replica per realm and
interval (a lease in the store). Summary and dashboard read the precomputed aggregates,
so they cost O(realms) with cheap per-realm work even at 10,000 realms.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import structlog

from qbo_gateway.alerts import (
    OUTAGE_KINDS,
    AlertManager,
    AlertThresholds,
    WebhookNotifier,
    alert_json,
    expiry_severity,
    failures_severity,
    iso,
    slow_severity,
)
from qbo_gateway.clock import Clock
from qbo_gateway.faults import FaultClass
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import TokenEvent
from qbo_gateway.state.base import (
    AdmissionPolicy,
    BreakerState,
    RealmLoad,
    StateUnavailable,
    TokenRecord,
    TokenStatus,
)
from qbo_gateway.state.health_memory import AlertRecord, HealthStore, HistoryEntry

log = structlog.get_logger(__name__)

STATUSES = ("healthy", "degraded", "unhealthy", "needs_reconnect")
_STATUS_RANK = {"needs_reconnect": 0, "unhealthy": 1, "degraded": 2, "healthy": 3}
_DASHBOARD_ROWS = 500  # default page: the worst realms first; ?limit= asks for more
SLA_TARGETS: dict[str, float] = {
    "uptime_ratio": 0.999,
    "avg_response_seconds": 2.0,
    "mttr_seconds": 300.0,
    "detection_to_alert_seconds": 60.0,
}
_SAMPLES_PER_REALM = 200
_GLOBAL_SAMPLES = 5000
_BUCKETS_PER_WINDOW = 96
_MAX_BUFFERED = 20000
_MAX_PER_REALM_FLUSH = 50


_DETAIL = {
    (o, f): f"{o}:{f.value}"
    for o in ("upstream", "cache_hit", "stale", "rejected", "error")
    for f in FaultClass
}


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


class RealmStats:
    """One realm's running figures, updated in O(1) per event."""

    def __init__(self, bucket_seconds: float) -> None:
        self.bucket_seconds = bucket_seconds
        self.consecutive_failures = 0
        self.failure_run_started: float | None = None
        self.last_success_at: float | None = None
        self.last_live_success_at: float | None = None
        self.last_failure_at: float | None = None
        self.last_latency: float | None = None
        self.last_check_at: float | None = None
        self.last_check_ok: bool | None = None
        self.last_stale_at: float | None = None
        self.stale_reason: str | None = None
        self.throttled_until: float | None = None
        self.breaker = BreakerState.CLOSED
        self.recent: deque[float] = deque(maxlen=5)
        self.samples: deque[tuple[float, float]] = deque(maxlen=_SAMPLES_PER_REALM)
        # [bucket_start, ok, failed, latency_sum, latency_n]
        self.buckets: deque[list[float]] = deque()
        self.ok = 0
        self.failed = 0
        self.latency_sum = 0.0
        self.latency_n = 0
        self._p95: float | None = None
        self._p95_dirty = False

    def add(self, at: float, ok: bool, latency: float | None) -> None:
        start = at - (at % self.bucket_seconds)
        if not self.buckets or self.buckets[-1][0] != start:
            self.buckets.append([start, 0, 0, 0.0, 0])
        bucket = self.buckets[-1]
        if ok:
            bucket[1] += 1
            self.ok += 1
        else:
            bucket[2] += 1
            self.failed += 1
        if latency is not None and latency > 0:
            bucket[3] += latency
            bucket[4] += 1
            self.latency_sum += latency
            self.latency_n += 1
            self.samples.append((at, latency))
            self.recent.append(latency)
            self.last_latency = latency
            self._p95_dirty = True

    def trim(self, cutoff: float) -> None:
        while self.buckets and self.buckets[0][0] + self.bucket_seconds <= cutoff:
            _, ok, failed, lat_sum, lat_n = self.buckets.popleft()
            self.ok -= int(ok)
            self.failed -= int(failed)
            self.latency_sum -= lat_sum
            self.latency_n -= int(lat_n)
        while self.samples and self.samples[0][0] < cutoff:
            self.samples.popleft()
            self._p95_dirty = True

    def avg_latency(self) -> float | None:
        return self.latency_sum / self.latency_n if self.latency_n > 0 else None

    def p95_latency(self) -> float | None:
        if self._p95_dirty:
            self._p95 = percentile([s for _, s in self.samples], 0.95)
            self._p95_dirty = False
        return self._p95

    def recent_avg(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[index]


@dataclass
class CycleReport:
    at: float = 0.0
    realms: int = 0
    probed: int = 0
    skipped_busy: int = 0
    skipped_leased: int = 0
    skipped_reconnect: int = 0
    errors: int = 0
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "realms": self.realms,
            "probed": self.probed,
            "skipped_busy": self.skipped_busy,
            "skipped_leased": self.skipped_leased,
            "skipped_reconnect": self.skipped_reconnect,
            "errors": self.errors,
            "duration_seconds": round(self.duration, 3),
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


def _target(value: float | None, target: float, *, higher_is_better: bool) -> dict[str, Any]:
    if value is None:
        return {"value": None, "target": target, "met": None}
    met = value >= target if higher_is_better else value < target
    return {"value": round(value, 6), "target": target, "met": met}


async def park_then_cancel(
    task: asyncio.Task[None] | None, idle: asyncio.Event, patience: float = 5.0
) -> None:
    """Wait (bounded) until a worker is idle, then cancel it where cancelling is safe."""
    if task is None or task.done():
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(patience):
            await idle.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class HealthMonitor:
    """The Observer, history, SLA, and the monitor loop. See the module docstring."""

    def __init__(
        self,
        *,
        store: HealthStore,
        clock: Clock,
        metrics: Metrics,
        realm_ids: Callable[[], Awaitable[list[str]]],
        token_statuses: Callable[[], Awaitable[list[TokenStatus]]],
        token_status: Callable[[str], Awaitable[TokenStatus | None]],
        load: Callable[[str], Awaitable[RealmLoad]],
        probe: Callable[[str], Awaitable[None]],
        interval: float = 300.0,
        history_seconds: float = 86400.0,
        autostart: bool = True,
        thresholds: AlertThresholds | None = None,
        webhook_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        policy: AdmissionPolicy | None = None,
        backend_up: Callable[[], bool] | None = None,
        owner: str | None = None,
        probe_concurrency: int = 8,
        tick_seconds: float = 5.0,
        status_cache_seconds: float = 30.0,
        webhook_base_delay: float = 1.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.interval = interval
        self.history_seconds = history_seconds
        self.autostart = autostart
        self.thresholds = thresholds or AlertThresholds()
        self.policy = policy
        self.owner = owner or uuid.uuid4().hex[:12]
        self._realm_ids = realm_ids
        self._token_statuses = token_statuses
        self._token_status = token_status
        self._load = load
        self._probe = probe
        self._backend_up = backend_up
        self._probe_concurrency = probe_concurrency
        self._tick_seconds = tick_seconds
        self._status_cache_seconds = status_cache_seconds
        notifier = None
        if webhook_url and session is None:
            log.warning("alert_webhook_disabled", reason="no HTTP session was given")
        if webhook_url and session is not None:
            notifier = WebhookNotifier(
                url=webhook_url,
                session=session,
                clock=clock,
                metrics=metrics,
                base_delay=webhook_base_delay,
            )
        self.alerts = AlertManager(
            store=store,
            clock=clock,
            metrics=metrics,
            notifier=notifier,
            history_seconds=history_seconds,
        )
        self._bucket_seconds = max(1.0, history_seconds / _BUCKETS_PER_WINDOW)
        self._stats: dict[str, RealmStats] = {}
        self._tokens: dict[str, TokenStatus] = {}
        self._realms: set[str] = set()
        self._realms_loaded_at: float | None = None
        self._global_samples: deque[tuple[float, float]] = deque(maxlen=_GLOBAL_SAMPLES)
        self._buffer: dict[str, list[HistoryEntry]] = {}
        self._buffered = 0
        self._flush_wake = asyncio.Event()
        self._flush_idle = asyncio.Event()
        self._tick_idle = asyncio.Event()
        self._flush_idle.set()
        self._flush_task: asyncio.Task[None] | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self.started_at = clock.now()
        self.last_cycle: CycleReport | None = None

    # ------------------------------------------------------------------ Observer (sync)

    def request_finished(
        self,
        realm_id: str,
        *,
        outcome: str,
        status: int,
        latency: float,
        fault: FaultClass | None,
        probe: bool = False,
    ) -> None:
        try:
            self._request_finished(realm_id, outcome, status, latency, fault, probe)
        except Exception as exc:  # noqa: BLE001 - observing must never fail a request
            log.error("health_observe_failed", error=type(exc).__name__)

    def _request_finished(
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
        if probe:
            self.metrics.health_checks.labels(
                result={True: "ok", False: "failure", None: "inconclusive"}[verdict]
            ).inc()
        if verdict is None:
            if probe:
                self._buffer_entry(
                    realm_id, HistoryEntry(now, "check", False, status, latency, detail)
                )
                stats = self._stats_for(realm_id)
                stats.last_check_at, stats.last_check_ok = now, False
            return
        stats = self._stats_for(realm_id)
        stats.trim(now - self.history_seconds)
        went_upstream = outcome == "upstream"
        stats.add(now, verdict, latency if went_upstream else None)
        if went_upstream and latency > 0:
            self._global_samples.append((now, latency))
        if probe:
            stats.last_check_at, stats.last_check_ok = now, verdict
        live_ok = verdict and not probe
        self._buffer_entry(
            realm_id,
            HistoryEntry(
                now,
                "check" if probe else "request",
                verdict,
                status,
                latency,
                detail,
                live=live_ok,
            ),
        )
        t = self.thresholds
        if verdict:
            stats.consecutive_failures = 0
            stats.failure_run_started = None
            stats.last_success_at = now
            if live_ok:
                stats.last_live_success_at = now
            self.alerts.set_condition(realm_id, "consecutive_failures", None)
            if stats.throttled_until is not None and stats.throttled_until <= now:
                stats.throttled_until = None
                self.alerts.set_condition(realm_id, "throttled", None)
        else:
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
        if went_upstream:
            avg = stats.recent_avg()
            severity = slow_severity(avg, t)
            if severity is None:
                self.alerts.set_condition(realm_id, "slow_responses", None)
            else:
                limit = t.slow_critical if severity == "critical" else t.slow_warning
                self.alerts.set_condition(
                    realm_id,
                    "slow_responses",
                    severity,
                    message=f"QuickBooks responses average over {limit:g} s",
                    value=None if avg is None else round(avg, 3),
                )

    def stale_served(self, realm_id: str, *, reason: str, age: float) -> None:
        stats = self._stats_for(realm_id)
        stats.last_stale_at = self.clock.now()
        stats.stale_reason = reason
        self._buffer_entry(
            realm_id, HistoryEntry(stats.last_stale_at, "stale", False, 0, 0.0, reason)
        )

    def breaker_changed(self, realm_id: str, state: BreakerState) -> None:
        stats = self._stats_for(realm_id)
        stats.breaker = state
        now = self.clock.now()
        self._buffer_entry(
            realm_id,
            HistoryEntry(now, "breaker", state is BreakerState.CLOSED, 0, 0.0, state.value),
        )
        if state is BreakerState.OPEN:
            self.alerts.set_condition(
                realm_id,
                "circuit_open",
                "critical",
                message="Circuit open: requests to QuickBooks are paused",
                started_at=stats.failure_run_started or now,
            )
        elif state is BreakerState.CLOSED:
            self.alerts.set_condition(realm_id, "circuit_open", None)

    def throttled(self, realm_id: str, *, until: float) -> None:
        stats = self._stats_for(realm_id)
        stats.throttled_until = max(until, stats.throttled_until or 0.0)
        self.alerts.set_condition(
            realm_id,
            "throttled",
            "warning",
            message="QuickBooks is throttling this realm",
        )

    def token_event(
        self, realm_id: str, event: TokenEvent, record: TokenRecord | None = None
    ) -> None:
        try:
            self._token_event(realm_id, event, record)
        except Exception as exc:  # noqa: BLE001 - observing must never fail a token call
            log.error("health_token_event_failed", error=type(exc).__name__)

    def _token_event(self, realm_id: str, event: TokenEvent, record: TokenRecord | None) -> None:
        now = self.clock.now()
        if event == "removed":
            self._tokens.pop(realm_id, None)
            self._realms.discard(realm_id)
            self._stats.pop(realm_id, None)
            self.alerts.clear_realm(realm_id)
            return
        self._realms.add(realm_id)
        previous = self._tokens.get(realm_id)
        if record is not None:
            self._tokens[realm_id] = TokenStatus(
                realm_id=realm_id,
                access_expires_at=record.access_expires_at,
                refresh_expires_at=record.refresh_expires_at,
                refresh_hard_expires_at=record.refresh_hard_expires_at,
                needs_reconnect=record.needs_reconnect,
                version=record.version,
                last_refresh_at=record.updated_at
                if event == "refreshed"
                else (previous.last_refresh_at if previous else None),
                refresh_failing=False,
            )
        status = self._tokens.get(realm_id)
        if event == "refresh_failed":
            if status is not None:
                self._tokens[realm_id] = replace(status, refresh_failing=True)
            valid = status is not None and status.access_expires_at > now
            self.alerts.set_condition(
                realm_id,
                "refresh_failing",
                "warning",
                message="Token refresh is failing"
                + ("; the access token is still valid" if valid else ""),
            )
        elif event == "reconnect_required":
            if status is not None:
                self._tokens[realm_id] = replace(status, needs_reconnect=True)
            self.alerts.set_condition(realm_id, "refresh_failing", None)
            self.alerts.set_condition(
                realm_id,
                "reconnect_required",
                "critical",
                message="Intuit refused the refresh token; the realm must be reconnected",
            )
        else:  # refreshed, reconnected, imported
            if status is not None and status.needs_reconnect and record is None:
                self._tokens[realm_id] = replace(status, needs_reconnect=False)
            self.alerts.set_condition(realm_id, "refresh_failing", None)
            self.alerts.set_condition(realm_id, "reconnect_required", None)
        self._evaluate_expiry(realm_id, now)

    # ------------------------------------------------------------------ token state

    def _evaluate_expiry(self, realm_id: str, now: float) -> None:
        status = self._tokens.get(realm_id)
        if status is None or status.needs_reconnect:
            self.alerts.set_condition(realm_id, "refresh_token_expiring", None)
            return
        ends = [
            (t, label)
            for t, label in (
                (status.refresh_expires_at, "expires"),
                (status.refresh_hard_expires_at, "reaches its hard expiry"),
            )
            if t is not None
        ]
        if not ends:
            self.alerts.set_condition(realm_id, "refresh_token_expiring", None)
            return
        end, label = min(ends)
        left = end - now
        severity = expiry_severity(left, self.thresholds)
        if severity is None:
            self.alerts.set_condition(realm_id, "refresh_token_expiring", None)
            return
        days = max(0, math.ceil(left / 86400))
        self.alerts.set_condition(
            realm_id,
            "refresh_token_expiring",
            severity,
            message=f"The refresh token {label} in under {days} day{'s' if days != 1 else ''}",
            value=round(left / 86400, 2),
        )

    async def refresh_tokens(self, *, force: bool = False) -> None:
        """Reload realm ids and token statuses (cached for a few seconds) and re-run the
        token rules, which depend on the passing of time (expiry)."""
        now = self.clock.now()
        if (
            not force
            and self._realms_loaded_at is not None
            and now - self._realms_loaded_at < self._status_cache_seconds
        ):
            return
        realms = await self._realm_ids()
        statuses = await self._token_statuses()
        self._realms = set(realms) | {s.realm_id for s in statuses}
        self._tokens = {s.realm_id: s for s in statuses}
        self._realms_loaded_at = now
        for realm_id, status in self._tokens.items():
            active = self.alerts.active_for(realm_id)
            if status.needs_reconnect:
                if "reconnect_required" not in active:
                    self.alerts.set_condition(
                        realm_id,
                        "reconnect_required",
                        "critical",
                        message="Intuit refused the refresh token; the realm must be reconnected",
                    )
            elif "reconnect_required" in active:
                self.alerts.set_condition(realm_id, "reconnect_required", None)
            failing = active.get("refresh_failing")
            if status.refresh_failing and failing is None:
                self.alerts.set_condition(
                    realm_id, "refresh_failing", "warning", message="Token refresh is failing"
                )
            elif (
                failing is not None
                and not status.refresh_failing
                and status.last_refresh_at is not None
                and status.last_refresh_at >= failing.raised_at
            ):
                self.alerts.set_condition(realm_id, "refresh_failing", None)
            self._evaluate_expiry(realm_id, now)
        for realm_id in list(self.alerts.realms_with_alerts()):
            if realm_id not in self._realms:
                self.alerts.clear_realm(realm_id)

    # ------------------------------------------------------------------ monitor loop

    @property
    def monitoring(self) -> bool:
        return self._monitor_task is not None and not self._monitor_task.done()

    async def run_cycle(self) -> CycleReport:
        """One monitor pass: probe each idle realm this replica holds the lease for."""
        started = self.clock.monotonic()
        now = self.clock.now()
        report = CycleReport(at=now)
        await self.refresh_tokens(force=True)
        report.realms = len(self._realms)
        todo: list[str] = []
        for realm_id in sorted(self._realms):
            token = self._tokens.get(realm_id)
            if token is not None and token.needs_reconnect:
                report.skipped_reconnect += 1
                continue
            stats = self._stats.get(realm_id)
            if (
                stats is not None
                and stats.last_live_success_at is not None
                and stats.last_live_success_at > now - self.interval
            ):
                report.skipped_busy += 1
                continue
            try:
                lease = await self.store.acquire_probe(
                    realm_id, owner=self.owner, now=now, interval=self.interval
                )
            except StateUnavailable:
                lease = "acquired"
            if lease == "busy":
                report.skipped_busy += 1
            elif lease == "held":
                report.skipped_leased += 1
            else:
                todo.append(realm_id)
        self.metrics.health_checks.labels(result="skipped_busy").inc(report.skipped_busy)
        gate = asyncio.Semaphore(self._probe_concurrency)

        async def one(realm_id: str) -> None:
            async with gate:
                try:
                    await self._probe(realm_id)
                    report.probed += 1
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one realm's probe must not stop others
                    report.errors += 1
                    self.metrics.health_checks.labels(result="error").inc()
                    log.warning("health_probe_error", realm_id=realm_id, error=type(exc).__name__)

        await asyncio.gather(*(one(r) for r in todo))
        await self._reconcile_breakers()
        self._expire_throttles(self.clock.now())
        self.update_realm_gauge()
        report.duration = self.clock.monotonic() - started
        self.last_cycle = report
        log.info("health_cycle", **report.to_json())
        return report

    async def check_now(self, realm_id: str) -> HistoryEntry | None:
        """Probe one realm at once (admin action); returns the check it recorded."""
        await self._probe(realm_id)
        await self.flush()
        checks = [
            e
            for e in await self.store.history(realm_id, since=0.0, limit=20)
            if e.source == "check"
        ]
        return checks[-1] if checks else None

    async def _reconcile_breakers(self) -> None:
        # The replica that closed a circuit reports it; others learn it here.
        for realm_id, kinds in list(self.alerts.realms_with_alerts().items()):
            if "circuit_open" not in kinds:
                continue
            try:
                load = await self._load(realm_id)
            except Exception:  # noqa: BLE001, S112 - unknown now; the next cycle retries
                continue
            if load.breaker is BreakerState.CLOSED:
                self._stats_for(realm_id).breaker = BreakerState.CLOSED
                self.alerts.set_condition(realm_id, "circuit_open", None)

    def _expire_throttles(self, now: float) -> None:
        for realm_id, kinds in list(self.alerts.realms_with_alerts().items()):
            alert = kinds.get("throttled")
            if alert is None:
                continue
            stats = self._stats.get(realm_id)
            until = stats.throttled_until if stats is not None else None
            if until is None:
                until = alert.raised_at + 60.0
            if until <= now:
                if stats is not None:
                    stats.throttled_until = None
                self.alerts.set_condition(realm_id, "throttled", None)

    async def housekeeping(self) -> None:
        """The frequent background chores: throttles end, token rules, shared alerts."""
        self._expire_throttles(self.clock.now())
        with contextlib.suppress(StateUnavailable):
            await self.alerts.sync()
        try:
            await self.refresh_tokens()
        except Exception as exc:  # noqa: BLE001 - token state unreadable now; retry next tick
            log.warning("health_token_refresh_failed", error=type(exc).__name__)
        self.update_realm_gauge()

    async def start_monitoring(self) -> bool:
        if self.monitoring:
            return False
        self._monitor_task = asyncio.get_running_loop().create_task(self._monitor_loop())
        log.info("health_monitor_started", interval=self.interval)
        return True

    async def stop_monitoring(self) -> bool:
        task, self._monitor_task = self._monitor_task, None
        if task is None or task.done():
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.info("health_monitor_stopped")
        return True

    async def _monitor_loop(self) -> None:
        while True:
            try:
                await self.run_cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop outlives one bad cycle
                log.error("health_cycle_failed", error=type(exc).__name__)
            await self.clock.sleep(self.interval)

    async def _tick_loop(self) -> None:
        while True:
            self._tick_idle.set()
            await self.clock.sleep(self._tick_seconds)
            self._tick_idle.clear()
            try:
                await self.housekeeping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - chores retry next tick
                log.warning("health_housekeeping_failed", error=type(exc).__name__)

    async def open(self, *, background: bool = True) -> None:
        """Start the writers; with `background`, the housekeeping tick and (autostart)
        the monitor loop too. Tests driving a ManualClock pass background=False."""
        self.alerts.start()
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
        if background and (self._tick_task is None or self._tick_task.done()):
            with contextlib.suppress(Exception):
                await self.refresh_tokens(force=True)
            self._tick_task = asyncio.get_running_loop().create_task(self._tick_loop())
            if self.autostart:
                await self.start_monitoring()

    async def close(self) -> None:
        await self.stop_monitoring()
        # Each worker finishes the write in hand and parks before it is cancelled:
        # cancelling redis-py in the middle of a command can leave the connection (and
        # with it the shutdown) waiting for a long time.
        await park_then_cancel(self._tick_task, self._tick_idle)
        self._tick_task = None
        self._flush_wake.set()
        await park_then_cancel(self._flush_task, self._flush_idle)
        self._flush_task = None
        with contextlib.suppress(Exception):
            await self._flush_now()
        await self.alerts.close()

    # ------------------------------------------------------------------ history writes

    def _stats_for(self, realm_id: str) -> RealmStats:
        stats = self._stats.get(realm_id)
        if stats is None:
            stats = self._stats[realm_id] = RealmStats(self._bucket_seconds)
        return stats

    def _buffer_entry(self, realm_id: str, entry: HistoryEntry) -> None:
        if self._buffered >= _MAX_BUFFERED:
            return  # the writer is far behind; aggregates still count, history skips
        items = self._buffer.setdefault(realm_id, [])
        if len(items) >= _MAX_PER_REALM_FLUSH:
            items.pop(0)
            self._buffered -= 1
        items.append(entry)
        self._buffered += 1
        self._flush_idle.clear()
        self._flush_wake.set()

    async def _flush_now(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer, self._buffered = self._buffer, {}, 0
        try:
            await self.store.record(batch, now=self.clock.now())
        except StateUnavailable:
            log.warning("health_history_write_skipped", realms=len(batch))

    async def _flush_loop(self) -> None:
        while True:
            if not self._buffer:
                self._flush_idle.set()
                self._flush_wake.clear()
                await self._flush_wake.wait()
                continue
            try:
                await self._flush_now()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - history is best effort
                log.error("health_history_write_failed", error=type(exc).__name__)

    async def flush(self) -> None:
        """Wait until buffered history and alert writes are stored (tests, admin check)."""
        if self._flush_task is None or self._flush_task.done():
            await self._flush_now()
        else:
            await self._flush_idle.wait()
        await self.alerts.flush()

    # ------------------------------------------------------------------ views

    def realm_status(self, realm_id: str, now: float) -> str:
        token = self._tokens.get(realm_id)
        alerts = self.alerts.active_for(realm_id)
        stats = self._stats.get(realm_id)
        if (token is not None and token.needs_reconnect) or "reconnect_required" in alerts:
            return "needs_reconnect"
        if "circuit_open" in alerts or (stats is not None and stats.breaker is BreakerState.OPEN):
            return "unhealthy"
        failures = alerts.get("consecutive_failures")
        if failures is not None and failures.severity == "critical":
            return "unhealthy"
        if (
            token is not None
            and token.access_expires_at <= now
            and (token.refresh_failing or "refresh_failing" in alerts)
        ):
            return "unhealthy"
        for kind, alert in alerts.items():
            if kind != "refresh_token_expiring" or alert.severity == "critical":
                return "degraded"
        if stats is not None and (
            stats.breaker is BreakerState.HALF_OPEN
            or (stats.last_stale_at is not None and stats.last_stale_at > now - self.interval)
        ):
            return "degraded"
        return "healthy"

    def known_realms(self) -> set[str]:
        return self._realms

    def backend_up(self) -> bool:
        return self._backend_up is None or self._backend_up()

    def status_counts(self, now: float) -> tuple[dict[str, int], dict[str, str]]:
        counts = dict.fromkeys(STATUSES, 0)
        by_realm: dict[str, str] = {}
        for realm_id in self._realms:
            status = self.realm_status(realm_id, now)
            counts[status] += 1
            by_realm[realm_id] = status
        return counts, by_realm

    def update_realm_gauge(self) -> dict[str, int]:
        counts, _ = self.status_counts(self.clock.now())
        for status, n in counts.items():
            self.metrics.realms.labels(status=status).set(n)
        return counts

    @staticmethod
    def overall_status(counts: dict[str, int]) -> str:
        total = sum(counts.values())
        down = counts["unhealthy"] + counts["needs_reconnect"]
        if total and down * 2 >= total:
            return "unhealthy"
        if down or counts["degraded"]:
            return "degraded"
        return "healthy"

    def monitor_json(self) -> dict[str, Any]:
        return {
            "running": self.monitoring,
            "interval_seconds": self.interval,
            "history_seconds": self.history_seconds,
            "last_cycle": self.last_cycle.to_json() if self.last_cycle else None,
        }

    async def summary(self) -> dict[str, Any]:
        await self.refresh_tokens_quietly()
        now = self.clock.now()
        counts, _ = self.status_counts(now)
        for status, n in counts.items():
            self.metrics.realms.labels(status=status).set(n)
        active = sorted(self.alerts.active(), key=lambda a: a.raised_at, reverse=True)
        by_severity = {"warning": 0, "critical": 0}
        for alert in active:
            by_severity[alert.severity] = by_severity.get(alert.severity, 0) + 1
        return {
            "status": self.overall_status(counts),
            "generated_at": iso(now),
            "realms": {"total": len(self._realms), **counts},
            "monitor": self.monitor_json(),
            "alerts": {
                "active": len(active),
                "by_severity": by_severity,
                "unacknowledged": sum(1 for a in active if a.state == "active"),
                "items": [alert_json(a) for a in active[:100]],
                "truncated": len(active) > 100,
            },
        }

    def _window_start(self, now: float) -> float:
        return max(now - self.history_seconds, self.started_at)

    def _incidents_by_realm(self, now: float) -> dict[str, Incidents]:
        start = self._window_start(now)
        grouped: dict[str, list[AlertRecord]] = {}
        for alert in self.alerts.active() + self.alerts.recent_resolved():
            if alert.kind in OUTAGE_KINDS:
                grouped.setdefault(alert.realm_id, []).append(alert)
        return {r: merge_incidents(a, start, now) for r, a in grouped.items()}

    def _uptime(self, incidents: Incidents | None, now: float) -> float:
        span = now - self._window_start(now)
        if incidents is None or span <= 0:
            return 1.0
        return max(0.0, 1.0 - incidents.downtime / span)

    def _alert_delay(self, now: float) -> float | None:
        notifier = self.alerts.notifier
        if notifier is not None:
            cutoff = now - self.history_seconds
            delays = [d for at, d in notifier.delivery_delays if at >= cutoff]
            return max(delays) if delays else None
        # Without a webhook an alert is "delivered" when raised: in process, at once.
        return 0.0 if self.alerts.raised_delays else None

    def _sla_block(
        self,
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

    async def dashboard(
        self, *, status: str | None = None, limit: int | None = None, offset: int = 0
    ) -> dict[str, Any]:
        """Totals and SLA over every realm; rows (worst first) only for the asked page."""
        await self.refresh_tokens_quietly()
        now = self.clock.now()
        cutoff = now - self.history_seconds
        incidents = self._incidents_by_realm(now)
        counts = dict.fromkeys(STATUSES, 0)
        selected: list[tuple[int, str, str]] = []
        total_ok = total_failed = 0
        lat_sum = 0.0
        lat_n = 0
        downtime = 0.0
        recoveries: list[float] = []
        for inc in incidents.values():
            downtime += inc.downtime
            recoveries.extend(inc.recoveries)
        for realm_id in self._realms:
            stats = self._stats.get(realm_id)
            if stats is not None:
                stats.trim(cutoff)
                total_ok += stats.ok
                total_failed += stats.failed
                lat_sum += stats.latency_sum
                lat_n += stats.latency_n
            realm_status = self.realm_status(realm_id, now)
            counts[realm_status] += 1
            if status is None or realm_status == status:
                selected.append((_STATUS_RANK[realm_status], realm_id, realm_status))
        selected.sort()
        limit = _DASHBOARD_ROWS if limit is None else limit
        rows = [
            self._row(realm_id, realm_status, incidents.get(realm_id), now)
            for _, realm_id, realm_status in selected[offset : offset + limit]
        ]
        while self._global_samples and self._global_samples[0][0] < cutoff:
            self._global_samples.popleft()
        span = now - self._window_start(now)
        n = len(self._realms)
        uptime = 1.0 if span <= 0 or n == 0 else max(0.0, 1.0 - downtime / (span * n))
        active_alerts = self.alerts.active()
        by_kind: dict[str, int] = {}
        by_severity = {"warning": 0, "critical": 0}
        for alert in active_alerts:
            by_kind[alert.kind] = by_kind.get(alert.kind, 0) + 1
            by_severity[alert.severity] = by_severity.get(alert.severity, 0) + 1
        return {
            "generated_at": iso(now),
            "status": self.overall_status(counts),
            "totals": {
                "realms": n,
                **counts,
                "requests_ok": total_ok,
                "requests_failed": total_failed,
            },
            "alerts": {
                "active": len(active_alerts),
                "by_severity": by_severity,
                "by_kind": by_kind,
            },
            "sla": self._sla_block(
                uptime=uptime,
                avg=lat_sum / lat_n if lat_n else None,
                p95=percentile([s for _, s in self._global_samples], 0.95),
                incidents=sum(i.count for i in incidents.values()),
                recoveries=recoveries,
                alert_delay=self._alert_delay(now),
                ok=total_ok,
                failed=total_failed,
            ),
            "monitor": self.monitor_json(),
            "realms": rows,
            "realms_total": len(selected),
            "offset": offset,
            "limit": limit,
        }

    def _row(
        self, realm_id: str, realm_status: str, incidents: Incidents | None, now: float
    ) -> dict[str, Any]:
        stats = self._stats.get(realm_id)
        token = self._tokens.get(realm_id)
        avg = p95 = None
        if stats is not None:
            avg, p95 = stats.avg_latency(), stats.p95_latency()
        return {
            "realm_id": realm_id,
            "status": realm_status,
            "breaker": stats.breaker.value if stats else "closed",
            "consecutive_failures": stats.consecutive_failures if stats else 0,
            "last_success_at": iso(stats.last_success_at) if stats else None,
            "last_check_at": iso(stats.last_check_at) if stats else None,
            "avg_response_seconds": None if avg is None else round(avg, 4),
            "p95_response_seconds": None if p95 is None else round(p95, 4),
            "uptime_ratio": round(self._uptime(incidents, now), 6),
            "refresh_expires_at": iso(
                _earliest(token.refresh_expires_at, token.refresh_hard_expires_at)
            )
            if token
            else None,
            "needs_reconnect": bool(token and token.needs_reconnect),
            "alerts": sorted(self.alerts.active_for(realm_id)),
        }

    async def business(self, realm_id: str) -> dict[str, Any] | None:
        """One realm's full picture from shared state (history, alerts, tokens, admission)."""
        await self.refresh_tokens_quietly()
        try:
            token = await self._token_status(realm_id)
        except Exception as exc:  # noqa: BLE001 - fall back to the cached status
            log.warning("health_token_status_failed", error=type(exc).__name__)
            token = self._tokens.get(realm_id)
        if token is not None:
            self._tokens[realm_id] = token
            self._realms.add(realm_id)
        elif realm_id not in self._realms:
            return None
        now = self.clock.now()
        load: RealmLoad | None
        try:
            load = await self._load(realm_id)
        except Exception:  # noqa: BLE001 - show what is known without the admission state
            load = None
        stats = self._stats.get(realm_id)
        if load is not None and stats is not None:
            stats.breaker = load.breaker
        try:
            history = await self.store.history(
                realm_id, since=now - self.history_seconds, limit=500
            )
        except StateUnavailable:
            history = []
        outcomes = [e for e in history if e.source in ("request", "check")]
        # Response time counts answers from QBO, as in the live aggregates.
        latencies = [
            e.latency for e in outcomes if e.latency > 0 and e.detail.startswith("upstream")
        ]
        ok = sum(1 for e in outcomes if e.ok)
        start = self._window_start(now)
        outage = [
            a
            for a in self.alerts.active() + self.alerts.recent_resolved()
            if a.realm_id == realm_id and a.kind in OUTAGE_KINDS
        ]
        incidents = merge_incidents(outage, start, now)
        active = sorted(self.alerts.active_for(realm_id).values(), key=lambda a: a.raised_at)
        checks = [e for e in history if e.source == "check"][-20:]
        breaker_state = (
            load.breaker.value
            if load is not None
            else (stats.breaker.value if stats is not None else "closed")
        )
        rate: dict[str, Any] | None = None
        if load is not None:
            rate = {
                "requests_last_minute": load.requests_last_minute,
                "requests_last_second": load.requests_last_second,
                "in_flight": load.in_flight,
                "cooldown_until": iso(load.cooldown_until),
            }
            if self.policy is not None:
                rate["per_minute_limit"] = self.policy.per_minute
                rate["per_second_limit"] = self.policy.per_second
                rate["concurrency_limit"] = self.policy.concurrency
                rate["minute_use_ratio"] = round(
                    load.requests_last_minute / max(1, self.policy.per_minute), 4
                )
        return {
            "realm_id": realm_id,
            "status": self.realm_status(realm_id, now),
            "generated_at": iso(now),
            "breaker": {
                "state": breaker_state,
                "consecutive_failures": load.consecutive_failures
                if load is not None
                else (stats.consecutive_failures if stats else 0),
                "open_until": iso(load.open_until) if load is not None else None,
            },
            "token": {
                "access_expires_at": iso(token.access_expires_at) if token else None,
                "refresh_expires_at": iso(token.refresh_expires_at) if token else None,
                "refresh_hard_expires_at": iso(token.refresh_hard_expires_at) if token else None,
                "needs_reconnect": bool(token and token.needs_reconnect),
                "refresh_failing": bool(token and token.refresh_failing),
                "last_refresh_at": iso(token.last_refresh_at) if token else None,
                "last_refresh_error": token.last_refresh_error if token else None,
            },
            "rate_limit": rate,
            "latency": {
                "last_seconds": stats.last_latency if stats else None,
                "avg_seconds": round(sum(latencies) / len(latencies), 4) if latencies else None,
                "p95_seconds": percentile(latencies, 0.95),
                "samples": len(latencies),
            },
            "sla": self._sla_block(
                uptime=self._uptime(incidents if incidents.count else None, now),
                avg=sum(latencies) / len(latencies) if latencies else None,
                p95=percentile(latencies, 0.95),
                incidents=incidents.count,
                recoveries=incidents.recoveries,
                alert_delay=self._alert_delay(now),
                ok=ok,
                failed=len(outcomes) - ok,
            ),
            "stale": {
                "last_served_at": iso(stats.last_stale_at) if stats else None,
                "reason": stats.stale_reason if stats else None,
            },
            "recent_checks": [entry_json(e) for e in reversed(checks)],
            "recent_events": [entry_json(e) for e in list(reversed(history))[:20]],
            "alerts": [alert_json(a) for a in active],
        }

    async def refresh_tokens_quietly(self) -> None:
        try:
            await self.refresh_tokens()
        except Exception as exc:  # noqa: BLE001 - serve the cached view rather than fail
            log.warning("health_token_refresh_failed", error=type(exc).__name__)


def _earliest(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def entry_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "at": iso(entry.at),
        "source": entry.source,
        "ok": entry.ok,
        "status": entry.status,
        "latency_seconds": round(entry.latency, 4),
        "detail": entry.detail,
    }
