"""The one-realm view (`/health/business/{realm_id}`): everything known about one realm.

Unlike the all-realm views this one reads shared state (stored history, the token store,
the admission backend), so another replica's work shows too; each source that fails is
left out rather than failing the view.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from qbo_gateway.admission.records import AdmissionPolicy, RealmLoad
from qbo_gateway.clock import Clock
from qbo_gateway.health.alert_rules import alert_json, iso
from qbo_gateway.health.alerts import AlertManager
from qbo_gateway.health.buckets import Series, total
from qbo_gateway.health.grading import realm_status
from qbo_gateway.health.sla import SlaTargets, Window, outage_begins, overlap, sla_block
from qbo_gateway.health.stats import RealmStats, RealmTable
from qbo_gateway.health.store_memory import RECENT_EVENTS, HealthStore, HistoryEntry
from qbo_gateway.health.timeline import realm_timeline
from qbo_gateway.health.token_rules import TokenRules
from qbo_gateway.logs import failure
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.tokens.records import TokenStatus

log = structlog.get_logger(__name__)


def entry_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "at": iso(entry.at),
        "source": entry.source,
        "ok": entry.ok,
        "status": entry.status,
        "latency_seconds": round(entry.latency, 4),
        "detail": entry.detail,
    }


def token_json(token: TokenStatus | None) -> dict[str, Any]:
    return {
        "access_expires_at": iso(token.access_expires_at) if token else None,
        "refresh_expires_at": iso(token.refresh_expires_at) if token else None,
        "refresh_hard_expires_at": iso(token.refresh_hard_expires_at) if token else None,
        "needs_reconnect": bool(token and token.needs_reconnect),
        "refresh_failing": bool(token and token.refresh_failing),
        "refresh_outcome_unknown": bool(token and token.refresh_outcome_unknown),
        "last_refresh_at": iso(token.last_refresh_at) if token else None,
        "last_refresh_error": token.last_refresh_error if token else None,
    }


def breaker_json(
    load: RealmLoad | None, stats: RealmStats | None, policy: AdmissionPolicy | None
) -> dict[str, Any]:
    """The shared admission state when readable, else what this replica last saw.

    The breaker counts failed attempts (each retry of a request is one), the
    `consecutive_failures` alert counts failed requests: both are named for what they count.
    """
    out: dict[str, Any] = {
        "state": stats.breaker.value if stats is not None else "closed",
        "consecutive_failed_attempts": None,
        "open_until": None,
        "counts": "attempts",
    }
    if load is not None:
        out["state"] = load.breaker.value
        out["consecutive_failed_attempts"] = load.consecutive_failures
        out["open_until"] = iso(load.open_until)
    if policy is not None:
        out["opens_after_failed_attempts"] = policy.failure_threshold
    out["consecutive_failed_requests"] = stats.consecutive_failures if stats else 0
    return out


class BusinessView:
    """Builds one realm's full picture from shared state (history, alerts, tokens, admission)."""

    def __init__(
        self,
        *,
        table: RealmTable,
        alerts: AlertManager,
        tokens: TokenRules,
        store: HealthStore,
        clock: Clock,
        token_status: Callable[[str], Awaitable[TokenStatus | None]],
        load: Callable[[str], Awaitable[RealmLoad]],
        policy: AdmissionPolicy | None,
        targets: SlaTargets,
        bucket_seconds: float,
    ) -> None:
        self.targets = targets
        self.bucket_seconds = bucket_seconds
        self.table = table
        self.alerts = alerts
        self.tokens = tokens
        self.store = store
        self.clock = clock
        self.policy = policy
        self._token_status = token_status
        self._load = load

    async def business(self, realm_id: str) -> dict[str, Any] | None:
        """One realm's full picture, or None for a realm nobody knows."""
        table = self.table
        token = await self._known_token(realm_id)
        if token is None and realm_id not in table.realms:
            return None
        now = self.clock.now()
        load: RealmLoad | None
        try:
            load = await self._load(realm_id)
        except Exception:  # noqa: BLE001 - show what is known without the admission state
            load = None
        stats = table.stats.get(realm_id)
        if load is not None and stats is not None:
            stats.breaker = load.breaker
        history = await self._recent(realm_id, now - table.history_seconds)
        series, window = await self._buckets(realm_id, now)
        totals = total(series, window.first, window.last)
        begins = outage_begins(self.alerts, realm_id)
        since = window.observed_since(series)
        if begins is not None:
            since = min(since if since is not None else now, begins)
        start = window.start if since is None else max(window.start, since)
        active = sorted(self.alerts.active_for(realm_id).values(), key=lambda a: a.raised_at)
        checks = [e for e in history if e.source == "check"][-20:]
        return {
            "realm_id": realm_id,
            "status": realm_status(table, self.alerts, realm_id, now),
            "generated_at": iso(now),
            "breaker": breaker_json(load, stats, self.policy),
            "token": token_json(token),
            "rate_limit": self._rate(load),
            "latency": {
                "last_seconds": stats.last_latency if stats else None,
                "avg_seconds": totals.avg_latency(),
                "p95_seconds": totals.p95_latency(),
                "samples": totals.latency_n,
            },
            "sla": sla_block(
                totals,
                span=now - start,
                down_now=overlap([] if begins is None else [begins], start, now),
                targets=self.targets,
                webhook=self.alerts.notifier is not None,
            ),
            "timeline": realm_timeline(series, window, begins, start),
            "stale": {
                "last_served_at": iso(stats.last_stale_at) if stats else None,
                "reason": stats.stale_reason if stats else None,
            },
            "recent_checks": [entry_json(e) for e in reversed(checks)],
            "recent_events": [entry_json(e) for e in list(reversed(history))[:20]],
            "alerts": [alert_json(a) for a in active],
        }

    async def _recent(self, realm_id: str, since: float) -> list[HistoryEntry]:
        try:
            return await self.store.history(realm_id, since=since, limit=RECENT_EVENTS)
        except StateUnavailable:
            return []

    async def _buckets(self, realm_id: str, now: float) -> tuple[Series, Window]:
        window = Window.ending(now, history=self.table.history_seconds, width=self.bucket_seconds)
        try:
            series = await self.store.realm_series(realm_id, first=window.first, last=window.last)
        except StateUnavailable:
            series = {}
        return series, window

    async def _known_token(self, realm_id: str) -> TokenStatus | None:
        """The realm's token status from the store (the cached one if the store fails)."""
        await self.tokens.refresh_quietly()
        try:
            token = await self._token_status(realm_id)
        except Exception as exc:  # noqa: BLE001 - fall back to the cached status
            log.warning("health_token_status_failed", **failure(exc))
            token = self.table.tokens.get(realm_id)
        if token is not None:
            self.table.tokens[realm_id] = token
            self.table.realms.add(realm_id)
        return token

    def _rate(self, load: RealmLoad | None) -> dict[str, Any] | None:
        if load is None:
            return None
        rate: dict[str, Any] = {
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
        return rate
