"""Token health rules: what token events and stored token statuses mean for alerts.

Token trouble reaches the monitor two ways: events from this replica's `TokenManager`
(refreshed, refresh_failed, reconnect_required, ...) and the shared token store, which
another replica may have changed. Both feed the same alerts (`refresh_failing`,
`reconnect_required`, `refresh_token_expiring`); the expiry rule depends on the passing of
time, so it is re-run on every reload as well as on every event.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog

from qbo_gateway.clock import Clock
from qbo_gateway.health.alert_rules import APP_WIDE, AlertThresholds, expiry_severity
from qbo_gateway.health.alerts import AlertManager
from qbo_gateway.health.history_writer import HistoryBuffer
from qbo_gateway.health.stats import RealmTable
from qbo_gateway.logs import failure
from qbo_gateway.observe import TokenEvent
from qbo_gateway.tokens.records import TokenRecord, TokenStatus

log = structlog.get_logger(__name__)

_TOKEN_FIELD = {
    "refreshed": "tok_ok",
    "refresh_failed": "tok_fail",
    "reconnect_required": "tok_reconnect",
}


class TokenRules:
    """Keeps `table.tokens`/`table.realms` current and the token alerts in step."""

    def __init__(
        self,
        *,
        table: RealmTable,
        alerts: AlertManager,
        history: HistoryBuffer,
        clock: Clock,
        thresholds: AlertThresholds,
        token_statuses: Callable[[], Awaitable[list[TokenStatus]]],
        status_cache_seconds: float,
    ) -> None:
        self.table = table
        self.alerts = alerts
        self.history = history
        self.clock = clock
        self.thresholds = thresholds
        self._token_statuses = token_statuses
        self._status_cache_seconds = status_cache_seconds

    def event(self, realm_id: str, event: TokenEvent, record: TokenRecord | None) -> None:
        now = self.clock.now()
        table = self.table
        counter = _TOKEN_FIELD.get(event)
        if counter is not None:
            self.history.count(realm_id, now, {counter: 1})
        if event == "removed":
            table.tokens.pop(realm_id, None)
            table.realms.discard(realm_id)
            table.stats.pop(realm_id, None)
            self.alerts.clear_realm(realm_id)
            return
        table.realms.add(realm_id)
        if event == "store_rolled_back":
            # Raised until the realm's next refresh is stored: the pair was written back,
            # but an operator must learn that the store loses writes.
            self.alerts.set_condition(
                realm_id,
                "token_store_rollback",
                "critical",
                message="The token store went back to an older pair; the newest was written back",
            )
            return
        if event == "refreshed":
            self.alerts.set_condition(realm_id, "token_store_rollback", None)
        elif event == "reconnected":
            table.stats_for(realm_id).reconnected_at = now  # a new grant, not yet proven
        if record is not None:
            table.tokens[realm_id] = _status(realm_id, record, event, table.tokens.get(realm_id))
        status = table.tokens.get(realm_id)
        if event == "refresh_failed":
            self._token_trouble(realm_id, True, now)
            if status is not None:
                table.tokens[realm_id] = replace(status, refresh_failing=True)
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
                table.tokens[realm_id] = replace(status, needs_reconnect=True)
            self.alerts.set_condition(realm_id, "refresh_failing", None)
            self.alerts.set_condition(
                realm_id,
                "reconnect_required",
                "critical",
                message="Intuit refused the refresh token; the realm must be reconnected",
            )
        else:  # refreshed, reconnected, imported
            if status is not None and status.needs_reconnect and record is None:
                table.tokens[realm_id] = replace(status, needs_reconnect=False)
            self.alerts.set_condition(realm_id, "refresh_failing", None)
            self.alerts.set_condition(realm_id, "reconnect_required", None)
        self.evaluate_expiry(realm_id, now)

    def evaluate_expiry(self, realm_id: str, now: float) -> None:
        status = self.table.tokens.get(realm_id)
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

    async def refresh(self, *, force: bool = False) -> None:
        """Reload realm ids and token statuses (cached for a few seconds) and re-run the
        token rules, which depend on the passing of time (expiry)."""
        now = self.clock.now()
        table = self.table
        if (
            not force
            and table.realms_loaded_at is not None
            and now - table.realms_loaded_at < self._status_cache_seconds
        ):
            return
        # One read of every realm's record (decrypting 10,000 of them is the cost): the
        # statuses name the realms too.
        statuses = await self._token_statuses()
        table.realms = {s.realm_id for s in statuses}
        table.tokens = {s.realm_id: s for s in statuses}
        table.realms_loaded_at = now
        for realm_id, status in table.tokens.items():
            self._token_trouble(
                realm_id, status.refresh_failing or status.refresh_outcome_unknown, now
            )
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
            self.evaluate_expiry(realm_id, now)
        for realm_id in list(self.alerts.realms_with_alerts()):
            if realm_id not in table.realms and realm_id != APP_WIDE:
                self.alerts.clear_realm(realm_id)

    def _token_trouble(self, realm_id: str, trouble: bool, now: float) -> None:
        """When the realm's token trouble began (for the probe cycle's doubt), or None."""
        stats = self.table.stats.get(realm_id)
        if trouble and (stats is None or stats.token_trouble_at is None):
            self.table.stats_for(realm_id).token_trouble_at = now
        elif not trouble and stats is not None:
            stats.token_trouble_at = None

    async def refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - serve the cached view rather than fail
            log.warning("health_token_refresh_failed", **failure(exc))


def _status(
    realm_id: str, record: TokenRecord, event: TokenEvent, previous: TokenStatus | None
) -> TokenStatus:
    """The token status a stored record means (its last refresh kept unless this was one)."""
    return TokenStatus(
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
