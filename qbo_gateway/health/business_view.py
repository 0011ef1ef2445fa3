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
from qbo_gateway.health.grading import realm_status
from qbo_gateway.health.sla import alert_delay, realm_incidents, sla_block, uptime
from qbo_gateway.health.stats import RealmStats, RealmTable, percentile
from qbo_gateway.health.store_memory import HealthStore, HistoryEntry
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
        "last_refresh_at": iso(token.last_refresh_at) if token else None,
        "last_refresh_error": token.last_refresh_error if token else None,
    }


def breaker_json(load: RealmLoad | None, stats: RealmStats | None) -> dict[str, Any]:
    """The shared admission state when readable, else what this replica last saw."""
    if load is not None:
        return {
            "state": load.breaker.value,
            "consecutive_failures": load.consecutive_failures,
            "open_until": iso(load.open_until),
        }
    return {
        "state": stats.breaker.value if stats is not None else "closed",
        "consecutive_failures": stats.consecutive_failures if stats else 0,
        "open_until": None,
    }


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
    ) -> None:
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
        try:
            history = await self.store.history(
                realm_id, since=now - table.history_seconds, limit=500
            )
        except StateUnavailable:
            history = []
        outcomes = [e for e in history if e.source in ("request", "check")]
        # Response time counts answers from QBO, as in the live aggregates.
        latencies = [
            e.latency for e in outcomes if e.latency > 0 and e.detail.startswith("upstream")
        ]
        ok = sum(1 for e in outcomes if e.ok)
        incidents = realm_incidents(self.alerts, realm_id, table.window_start(now), now)
        active = sorted(self.alerts.active_for(realm_id).values(), key=lambda a: a.raised_at)
        checks = [e for e in history if e.source == "check"][-20:]
        return {
            "realm_id": realm_id,
            "status": realm_status(table, self.alerts, realm_id, now),
            "generated_at": iso(now),
            "breaker": breaker_json(load, stats),
            "token": token_json(token),
            "rate_limit": self._rate(load),
            "latency": {
                "last_seconds": stats.last_latency if stats else None,
                "avg_seconds": round(sum(latencies) / len(latencies), 4) if latencies else None,
                "p95_seconds": percentile(latencies, 0.95),
                "samples": len(latencies),
            },
            "sla": sla_block(
                uptime=uptime(
                    incidents if incidents.count else None, now - table.window_start(now)
                ),
                avg=sum(latencies) / len(latencies) if latencies else None,
                p95=percentile(latencies, 0.95),
                incidents=incidents.count,
                recoveries=incidents.recoveries,
                alert_delay=alert_delay(self.alerts, now, table.history_seconds),
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
