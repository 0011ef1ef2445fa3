"""The in-process copy of every realm's tokens, and reading the store through it.

The state backend can be unreachable for a while. Requests keep working on the last record
read until its access token expires, so every read of the store goes through here and leaves
its record behind. A refreshed pair the store could not take is the only copy of a rotated
refresh token (the old one may already be dead at Intuit): it is held here as pending and
written before anything else reads or refreshes the realm, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from qbo_gateway.clock import Clock
from qbo_gateway.faults import UnknownRealm, UpstreamUnavailable
from qbo_gateway.logs import failure
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.tokens.crypto import TokenDecryptError
from qbo_gateway.tokens.records import TokenRecord, TokenStore

log = structlog.get_logger(__name__)

RECHECK_SECONDS = 5.0  # how long an in-memory record is trusted before the store is re-read


@dataclass
class Pending:
    """A refreshed pair the store did not take yet (backend failed mid-refresh)."""

    record: TokenRecord
    base_version: int


class TokenMemory:
    def __init__(
        self, *, store: TokenStore, clock: Clock, availability: BackendAvailability | None
    ) -> None:
        self._store = store
        self._clock = clock
        self._availability = availability
        self._cache: dict[str, tuple[TokenRecord, float]] = {}
        self._pending: dict[str, Pending] = {}

    def backend_up(self) -> bool:
        return self._availability is None or self._availability.up

    def down(self, exc: BaseException) -> None:
        if self._availability is not None:
            self._availability.mark_down(exc)

    def remember(self, record: TokenRecord) -> None:
        self._cache[record.realm_id] = (record, self._clock.monotonic())

    def cached(self, realm_id: str) -> TokenRecord | None:
        pending = self._pending.get(realm_id)
        if pending is not None:
            return pending.record
        hit = self._cache.get(realm_id)
        return None if hit is None else hit[0]

    def forget(self, realm_id: str) -> None:
        self._cache.pop(realm_id, None)
        self._pending.pop(realm_id, None)

    def hold(self, realm_id: str, record: TokenRecord, base_version: int) -> None:
        """Keep a pair the store refused to take until `flush_pending` stores it."""
        self._pending[realm_id] = Pending(record, base_version)

    def settle(self, realm_id: str) -> None:
        """The store has the realm's latest pair: nothing is pending any more."""
        self._pending.pop(realm_id, None)

    def pending_realms(self) -> list[str]:
        return list(self._pending)

    async def read(self, realm_id: str) -> TokenRecord | None:
        """The store's record (StateUnavailable when the backend is down)."""
        if not self.backend_up():
            raise StateUnavailable("state backend is down")
        try:
            if realm_id in self._pending:
                await self.flush_pending(realm_id)
            record = await self._store.get(realm_id)
        except StateUnavailable as exc:
            self.down(exc)
            raise
        except TokenDecryptError as exc:
            log.error("token_record_unreadable", realm_id=realm_id, **failure(exc))
            raise UnknownRealm(
                f"the stored tokens of realm {realm_id} cannot be decrypted with QBO_TOKEN_KEYS"
            ) from exc
        if record is None:
            self._cache.pop(realm_id, None)
        else:
            self.remember(record)
        return record

    async def current(self, realm_id: str, margin: float) -> TokenRecord:
        """The realm's record for a request: a recent copy, the store's, or the last seen."""
        hit = self._cache.get(realm_id)
        if (
            hit is not None
            and realm_id not in self._pending
            and not hit[0].needs_reconnect
            and hit[0].access_expires_at - self._clock.now() > margin
            and self._clock.monotonic() - hit[1] < RECHECK_SECONDS
        ):
            return hit[0]
        try:
            record = await self.read(realm_id)
        except StateUnavailable as exc:
            cached = self.cached(realm_id)
            if cached is None:
                raise UpstreamUnavailable(
                    "the token store is unreachable", reason="state_unavailable"
                ) from exc
            return cached
        if record is None:
            raise UnknownRealm(f"no tokens for realm {realm_id}")
        return record

    async def records(self) -> list[TokenRecord]:
        """Every realm's record: the store's, or the copies held here while it is down."""
        if self.backend_up():
            try:
                records = await self._store.list_records()
            except StateUnavailable as exc:
                self.down(exc)
            else:
                for record in records:
                    self.remember(record)
                return records
        realms = sorted(set(self._cache) | set(self._pending))
        return [r for r in (self.cached(realm) for realm in realms) if r is not None]

    async def flush_pending(self, realm_id: str) -> None:
        pending = self._pending.get(realm_id)
        if pending is None:
            return
        stored = await self._store.put(pending.record, expected_version=pending.base_version)
        del self._pending[realm_id]
        if stored is None:
            log.warning("token_pending_superseded", realm_id=realm_id)
        else:
            log.info("token_pending_stored", realm_id=realm_id, version=stored.version)
            self.remember(stored)
