"""Every realm's access token, fresh, with exactly one refresh at a time.

Intuit rotates refresh tokens and the old one may die at once, so two refreshes of one realm
(two requests, two replicas) can sever it for good, and so can a new pair that is lost.
`TokenManager` is the one door to a realm's tokens for the request path (`access_token`,
`after_unauthorized`), operators (import, revoke, status, forced refresh) and the background
refresher; it decides when the token in hand is good enough and delegates the rest:
`coordinator` (single-flight, cross-replica lock, shielding from cancellation),
`refresh` (the locked refresh: re-read, re-check, token call, durable store),
`policy` (when a refresh is needed), `local_copy` (the in-process copy served while
the state backend is unreachable, and pairs not yet stored), `outcomes` (what the last
refresh of each realm did) and `refresher` (the periodic pass over every realm)."""

from __future__ import annotations

import contextlib
import dataclasses

import structlog

from qbo_gateway.clock import Clock
from qbo_gateway.faults import GatewayError, ReconnectRequired, UpstreamUnavailable
from qbo_gateway.metrics import Metrics
from qbo_gateway.oauth.intuit import OAuthClient
from qbo_gateway.observe import Observer, TokenEvent
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.locks import Locks
from qbo_gateway.tokens.coordinator import RefreshCoordinator
from qbo_gateway.tokens.crypto import TokenDecryptError
from qbo_gateway.tokens.lease import lease_seconds
from qbo_gateway.tokens.local_copy import TokenMemory
from qbo_gateway.tokens.outcomes import RefreshOutcomes
from qbo_gateway.tokens.policy import Mode, RefreshPolicy
from qbo_gateway.tokens.reconcile import Reconciler
from qbo_gateway.tokens.records import TokenRecord, TokenStatus, TokenStore
from qbo_gateway.tokens.recovery import Recovery
from qbo_gateway.tokens.refresh import LockedRefresh
from qbo_gateway.tokens.refresher import BackgroundRefresher
from qbo_gateway.tokens.spill import SpillFile

log = structlog.get_logger(__name__)


class TokenExists(Exception):
    """The realm already has tokens; importing over them needs `force`."""


def new_record(
    realm_id: str,
    refresh_token: str,
    access_token: str | None,
    access_expires_at: float | None,
    now: float,
) -> TokenRecord:
    return TokenRecord(
        realm_id=realm_id,
        access_token=access_token or "",
        refresh_token=refresh_token,
        access_expires_at=access_expires_at if access_token and access_expires_at else 0.0,
        updated_at=now,
    )


class TokenManager:
    def __init__(
        self,
        *,
        store: TokenStore,
        locks: Locks,
        oauth: OAuthClient,
        clock: Clock,
        metrics: Metrics,
        observer: Observer,
        margin: float = 900,
        lock_lease: float | None = None,
        token_timeout: float = 15,
        availability: BackendAvailability | None = None,
        spill: SpillFile | None = None,
    ) -> None:
        # About one token call: renewed while the refresh runs, so a holder that died
        # frees the realm soon (`lease`).
        lock_lease = lock_lease or lease_seconds(token_timeout)
        self._store = store
        self._oauth = oauth
        self._clock = clock
        self._observer = observer
        self._margin = margin
        spill = spill or SpillFile()  # memory only: for tests and tools without a state dir
        self._memory = TokenMemory(
            store=store,
            clock=clock,
            availability=availability,
            spill=spill,
            reconciler=Reconciler(store=store, spill=spill, observer=observer),
        )
        self._outcomes = RefreshOutcomes()
        self._policy = RefreshPolicy(clock=clock, margin=margin)
        locked = LockedRefresh(
            store=store,
            oauth=oauth,
            clock=clock,
            metrics=metrics,
            observer=observer,
            memory=self._memory,
            outcomes=self._outcomes,
            policy=self._policy,
            token_timeout=token_timeout,
        )
        self._coordinator = RefreshCoordinator(
            locks=locks,
            metrics=metrics,
            memory=self._memory,
            policy=self._policy,
            locked=locked,
            lock_lease=lock_lease,
        )
        self._recovery = Recovery(memory=self._memory, coordinator=self._coordinator)
        if availability is not None:
            availability.on_up(self._recovery.store_back)
        self._refresher = BackgroundRefresher(
            store=store,
            clock=clock,
            memory=self._memory,
            outcomes=self._outcomes,
            policy=self._policy,
            coordinator=self._coordinator,
        )

    @property
    def config_error(self) -> str | None:
        """Set while Intuit refuses the app's own credentials (invalid_client)."""
        return self._outcomes.config_error

    # --- the request path -------------------------------------------------------------

    async def access_token(self, realm_id: str) -> str:
        record = await self._memory.current(realm_id, self._margin)
        if record.needs_reconnect:
            raise ReconnectRequired(f"realm {realm_id} must be reconnected")
        now = self._clock.now()
        if record.access_expires_at - now > self._margin:
            return record.access_token
        if self._outcomes.cooling(record, now):
            return record.access_token  # a token call just failed: no retry per request
        return (await self._coordinator.refresh(realm_id, Mode.DUE)).access_token

    async def after_unauthorized(self, realm_id: str, used_token: str) -> str | None:
        """QBO refused `used_token` (401/3200): a token to replay with once, or None.

        Raises ReconnectRequired when the realm's refresh token is dead (now or already),
        so the caller gets the gateway's verdict (or a degraded read), not a bare 401.
        """
        try:
            record = await self._memory.read(realm_id)
        except StateUnavailable:
            record = self._memory.cached(realm_id)
        except GatewayError:
            return None
        if record is None:
            return None
        if record.needs_reconnect:
            raise ReconnectRequired("The realm's refresh token was refused; reconnect it")
        if record.access_token != used_token and record.access_expires_at > self._clock.now():
            return record.access_token
        try:
            fresh = await self._coordinator.refresh(realm_id, Mode.UNAUTHORIZED, used_token)
        except ReconnectRequired:
            raise
        except GatewayError:
            return None
        return fresh.access_token if fresh.access_token != used_token else None

    # --- operations -------------------------------------------------------------------

    async def force_refresh(self, realm_id: str) -> TokenStatus:
        if not self._memory.backend_up():
            raise UpstreamUnavailable("the state backend is unreachable: refresh refused")
        record = await self._coordinator.refresh(realm_id, Mode.FORCE)
        return self._status(record)

    async def bootstrap(
        self,
        realm_id: str,
        access_token: str | None,
        refresh_token: str,
        access_expires_at: float | None,
    ) -> bool:
        """Store environment tokens only if the store has no record: a stored (rotated)
        refresh token always wins over the environment."""
        record = new_record(
            realm_id, refresh_token, access_token, access_expires_at, self._clock.now()
        )
        stored = await self._store.put(record, expected_version=None)
        if stored is None:
            log.info("token_bootstrap_skipped", realm_id=realm_id, reason="store has the realm")
            return False
        self._memory.remember(stored)
        log.info("token_bootstrap_imported", realm_id=realm_id)
        self._observer.token_event(realm_id, "imported", stored)
        return True

    async def import_tokens(
        self,
        realm_id: str,
        refresh_token: str,
        access_token: str | None = None,
        access_expires_at: float | None = None,
        *,
        force: bool = False,
        refresh_expires_at: float | None = None,
        refresh_hard_expires_at: float | None = None,
    ) -> TokenRecord:
        previous: TokenRecord | None = None
        with contextlib.suppress(TokenDecryptError):
            previous = await self._store.get(realm_id)
        record = new_record(
            realm_id, refresh_token, access_token, access_expires_at, self._clock.now()
        ).with_changes(
            refresh_expires_at=refresh_expires_at,
            refresh_hard_expires_at=refresh_hard_expires_at,
        )
        stored = await self._store.put(record, expected_version=None, force=force)
        if stored is None:
            raise TokenExists(f"realm {realm_id} already has tokens (use --force to replace)")
        await self._memory.settle(realm_id)
        self._outcomes.cleared(realm_id)
        self._memory.remember(stored)
        event: TokenEvent = (
            "reconnected" if previous is not None and previous.needs_reconnect else "imported"
        )
        log.info("tokens_imported", realm_id=realm_id, replaced=previous is not None)
        self._observer.token_event(realm_id, event, stored)
        return stored

    async def revoke(self, realm_id: str) -> bool:
        """Revoke the realm's grant at Intuit, then forget the realm."""
        record = await self._store.get(realm_id)
        if record is None:
            return False
        await self._oauth.revoke(record.refresh_token)
        return await self.remove(realm_id)

    async def remove(self, realm_id: str) -> bool:
        removed = await self._store.delete(realm_id)
        await self._memory.settle(realm_id)
        if removed:
            log.info("tokens_removed", realm_id=realm_id)
            self._observer.token_event(realm_id, "removed", None)
        return removed

    async def status(self, realm_id: str) -> TokenStatus | None:
        try:
            record = await self._memory.read(realm_id)
        except StateUnavailable:
            record = self._memory.cached(realm_id)
        return None if record is None else self._status(record)

    async def statuses(self) -> list[TokenStatus]:
        return [self._status(r) for r in await self._memory.records()]

    def _status(self, record: TokenRecord) -> TokenStatus:
        status = self._outcomes.status(record)
        if self._memory.outcome_unknown(record.realm_id):
            status = dataclasses.replace(status, refresh_outcome_unknown=True)
        return status

    async def realm_ids(self) -> list[str]:
        return [r.realm_id for r in await self._memory.records()]

    # --- the background refresher -----------------------------------------------------

    async def refresh_due_realms(self) -> int:
        """One pass of the background refresher; returns how many realms it refreshed."""
        return await self._refresher.refresh_due_realms()

    async def run_refresher(self, interval: float) -> None:
        await self._refresher.run(interval)

    # --- recovery (start, store back, shutdown) -----------------------------------------

    async def reconcile(self) -> int:
        """Write back every pair this replica holds that the store lacks (on start and
        after each store outage); returns how many realms were checked."""
        return await self._recovery.reconcile()

    async def check_unknown_outcomes(self) -> list[str]:
        """Check at once every realm whose last refresh outcome is unknown (on start)."""
        return await self._recovery.check_unknown()

    async def drain(self, budget: float | None = None) -> None:
        """Wait for refreshes and token writes in flight, at most `budget` seconds; past
        it they are cut off (their pairs are spilled, their token calls noted)."""
        await self._recovery.drain(budget)
