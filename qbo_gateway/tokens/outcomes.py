"""What the last refresh of each realm did: for status, alerts and the retry cooldown.

A refresh's outcome outlives the refresh: the status API and the alert rules report the last
success and the last error, and a failed token call must not be retried by every request
while the access token still works (Intuit would get a storm, each request a delay). The
bookkeeping is kept apart from the refresh procedure so that it reads as a list of outcomes,
and so that the status a realm reports is built from one place.
"""

from __future__ import annotations

from qbo_gateway.tokens.records import TokenRecord, TokenStatus

# After a failed token call a still-valid access token is used without asking Intuit again
# for this long, so a down token endpoint costs each request nothing and Intuit no storm.
REFRESH_COOLDOWN = 30.0


class RefreshOutcomes:
    """The last success, last error and retry cooldown of each realm's refresh."""

    def __init__(self) -> None:
        self._last_refresh_at: dict[str, float] = {}
        self._last_error: dict[str, str] = {}
        self._failing: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self.config_error: str | None = None  # invalid_client: the app's, not a realm's

    def cooling(self, record: TokenRecord, now: float) -> bool:
        """A token call just failed and the access token still lives: do not ask again yet."""
        return record.access_expires_at > now and now < self._retry_at.get(record.realm_id, 0.0)

    def succeeded(self, realm_id: str, now: float) -> None:
        self._last_refresh_at[realm_id] = now
        self._last_error.pop(realm_id, None)
        self._failing.discard(realm_id)
        self._retry_at.pop(realm_id, None)
        self.config_error = None

    def failed(self, realm_id: str, error: str, now: float) -> None:
        self._retry_at[realm_id] = now + REFRESH_COOLDOWN
        self._failing.add(realm_id)
        self._last_error[realm_id] = error

    def client_refused(self, realm_id: str, error: str, now: float) -> None:
        self._retry_at[realm_id] = now + REFRESH_COOLDOWN
        self.config_error = error

    def grant_refused(self, realm_id: str) -> None:
        self._failing.discard(realm_id)
        self._last_error[realm_id] = "invalid_grant: Intuit refused the refresh token"

    def cleared(self, realm_id: str) -> None:
        """New tokens were imported: earlier failures no longer describe the realm."""
        self._failing.discard(realm_id)
        self._last_error.pop(realm_id, None)

    def status(self, record: TokenRecord) -> TokenStatus:
        realm_id = record.realm_id
        return TokenStatus(
            realm_id=realm_id,
            access_expires_at=record.access_expires_at,
            refresh_expires_at=record.refresh_expires_at,
            refresh_hard_expires_at=record.refresh_hard_expires_at,
            needs_reconnect=record.needs_reconnect,
            version=record.version,
            last_refresh_at=self._last_refresh_at.get(realm_id),
            last_refresh_error=self._last_error.get(realm_id),
            refresh_failing=realm_id in self._failing and not record.needs_reconnect,
        )
