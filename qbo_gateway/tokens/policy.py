"""When a realm's tokens must be refreshed, and what to serve when they cannot be.

Three callers ask for a refresh for three different reasons (a token near expiry, a token QBO
just refused, an admin), and the same question is asked again after waiting for a lock or
joining another caller's refresh: "is a refresh still needed, or did someone else do it?".
One answer, in one place, keeps the single-flight, the lock wait and the locked re-check
from drifting apart; so does one rule for serving the current token when a refresh fails.
"""

from __future__ import annotations

import enum

from qbo_gateway.clock import Clock
from qbo_gateway.faults import UpstreamUnavailable
from qbo_gateway.tokens.records import TokenRecord

DAILY_REFRESH = 23 * 3600.0  # use every refresh token at least once a day


class Mode(enum.Enum):
    DUE = "due"  # refresh only if inside the margin or the refresh token is a day old
    UNAUTHORIZED = "unauthorized"  # QBO refused `used_token`: refresh unless it changed
    FORCE = "force"  # admin: always refresh, even a reconnect-required realm


class RefreshPolicy:
    def __init__(self, *, clock: Clock, margin: float) -> None:
        self._clock = clock
        self.margin = margin

    def is_due(self, record: TokenRecord) -> bool:
        now = self._clock.now()
        return (
            record.access_expires_at - now <= self.margin
            or now - record.updated_at >= DAILY_REFRESH
        )

    def needs(
        self, record: TokenRecord, mode: Mode, used_token: str | None, seen_version: int | None
    ) -> bool:
        if mode is Mode.DUE:
            return self.is_due(record)
        if mode is Mode.UNAUTHORIZED:
            return record.access_token == used_token
        return seen_version is None or record.version <= seen_version

    def fallback(self, current: TokenRecord, mode: Mode, why: str) -> TokenRecord:
        """After a failed token call: the current token while it lives, never cleared."""
        if mode is not Mode.FORCE and current.access_expires_at > self._clock.now():
            return current
        raise UpstreamUnavailable(f"token refresh failed: {why}", reason="token_refresh")
