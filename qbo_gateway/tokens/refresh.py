"""One refresh of one realm, done while holding the realm's lock.

Intuit rotates refresh tokens and the old one may die at once, so what happens between
taking the lock and releasing it decides whether a realm survives: re-read the store and
re-check (another replica may have refreshed already), call the token endpoint with a few
retries, and store the new pair durably (compare-and-set on the version) before anyone
uses it. A refused grant is told apart from a refresh token rotated under us, so a realm
is flagged for reconnection only when its refresh token is really dead.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import aiohttp
import structlog

from qbo_gateway.clock import Clock
from qbo_gateway.faults import ReconnectRequired, UnknownRealm
from qbo_gateway.logs import failure
from qbo_gateway.metrics import Metrics
from qbo_gateway.oauth.intuit import (
    InvalidClient,
    InvalidGrant,
    OAuthClient,
    OAuthError,
    TokenGrant,
    TransientTokenError,
)
from qbo_gateway.observe import Observer
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.tokens.local_copy import TokenMemory
from qbo_gateway.tokens.outcomes import RefreshOutcomes
from qbo_gateway.tokens.policy import Mode, RefreshPolicy
from qbo_gateway.tokens.records import TokenRecord, TokenStore

log = structlog.get_logger(__name__)

TOKEN_ATTEMPTS = 3
BACKOFF_BASE = 0.5  # seconds before the second attempt; doubles, with jitter
STORE_ATTEMPTS = 2  # then the spill file holds the pair until the store is back


def answer_lost(exc: BaseException) -> bool:
    """Whether Intuit may have acted on a token call whose answer never arrived (a timeout,
    a connection broken after sending), so the refresh token may have rotated."""
    cause = exc.__cause__
    if isinstance(cause, TimeoutError):
        return True
    return isinstance(cause, aiohttp.ClientError) and not isinstance(
        cause, aiohttp.ClientConnectorError
    )


class LockedRefresh:
    def __init__(
        self,
        *,
        store: TokenStore,
        oauth: OAuthClient,
        clock: Clock,
        metrics: Metrics,
        observer: Observer,
        memory: TokenMemory,
        outcomes: RefreshOutcomes,
        policy: RefreshPolicy,
        token_timeout: float,
    ) -> None:
        self._store = store
        self._oauth = oauth
        self._clock = clock
        self._metrics = metrics
        self._observer = observer
        self._memory = memory
        self._outcomes = outcomes
        self._policy = policy
        self._token_timeout = token_timeout

    async def run(
        self,
        realm_id: str,
        mode: Mode,
        used_token: str | None,
        confirm: Callable[[], Awaitable[None]] | None = None,
    ) -> TokenRecord:
        """The realm's refreshed record, or the current one when no refresh is needed."""
        current = await self._memory.read(realm_id)
        if current is None:
            raise UnknownRealm(f"no tokens for realm {realm_id}")
        if current.needs_reconnect and mode is not Mode.FORCE:
            raise ReconnectRequired(f"realm {realm_id} must be reconnected")
        if mode is not Mode.FORCE and not self._policy.needs(current, mode, used_token, None):
            return current
        # Durably noted before the call: a crash before its answer is handled leaves the
        # outcome unknown, and the next start checks the realm at once.
        await self._memory.refresh_begins(current, self._clock.now())
        try:
            grant = await self._call_token_endpoint(realm_id, current, confirm)
        except InvalidGrant:
            try:
                return await self._invalid_grant(realm_id, current)
            finally:  # known once the verdict is stored, not before
                await self._memory.refresh_answered(realm_id)
        except InvalidClient as exc:
            await self._memory.refresh_answered(realm_id)
            config_error = "Intuit refused the app's client id/secret (invalid_client)"
            self._outcomes.client_refused(realm_id, config_error, self._clock.now())
            self._metrics.token_refreshes.labels(result="invalid_client").inc()
            log.error(
                "token_refresh_invalid_client", **failure(exc), fix="check QBO_CLIENT_ID/SECRET"
            )
            return self._policy.fallback(current, mode, config_error)
        except OAuthError as exc:
            if not answer_lost(exc):
                await self._memory.refresh_answered(realm_id)
            self._outcomes.failed(realm_id, str(exc), self._clock.now())
            self._metrics.token_refreshes.labels(result="failure").inc()
            log.warning("token_refresh_failed", realm_id=realm_id, **failure(exc))
            self._observer.token_event(realm_id, "refresh_failed", current)
            return self._policy.fallback(current, mode, str(exc))
        return await self._store_grant(realm_id, current, grant)

    async def _call_token_endpoint(
        self,
        realm_id: str,
        current: TokenRecord,
        confirm: Callable[[], Awaitable[None]] | None,
    ) -> TokenGrant:
        for attempt in range(1, TOKEN_ATTEMPTS + 1):
            if confirm is not None:
                await confirm()  # the lock outlasts this call, or no call is made
            try:
                return await asyncio.wait_for(
                    self._oauth.refresh(current.refresh_token), self._token_timeout
                )
            except TimeoutError as exc:
                error: TransientTokenError = TransientTokenError("token endpoint timed out")
                error.__cause__ = exc
            except TransientTokenError as exc:
                error = exc
            if attempt == TOKEN_ATTEMPTS:
                raise error
            delay = BACKOFF_BASE * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
            log.warning("token_refresh_retry", realm_id=realm_id, attempt=attempt, **failure(error))
            await self._clock.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _invalid_grant(self, realm_id: str, current: TokenRecord) -> TokenRecord:
        # Another replica (or an import) may have rotated the token under us: look once.
        again = await self._store.get(realm_id)
        if again is not None and again.refresh_token != current.refresh_token:
            self._memory.remember(again)
            if again.needs_reconnect:
                raise ReconnectRequired(f"realm {realm_id} must be reconnected")
            return again
        self._metrics.token_refreshes.labels(result="invalid_grant").inc()
        self._outcomes.grant_refused(realm_id)
        flagged = current
        if again is not None and not again.needs_reconnect:
            stored = await self._store.put(
                again.with_changes(needs_reconnect=True), expected_version=again.version
            )
            flagged = stored or again.with_changes(needs_reconnect=True)
        elif again is not None:
            flagged = again
        self._memory.remember(flagged)
        log.error("token_reconnect_required", realm_id=realm_id)
        self._observer.token_event(realm_id, "reconnect_required", flagged)
        raise ReconnectRequired(f"realm {realm_id} must be reconnected")

    async def _store_grant(
        self, realm_id: str, current: TokenRecord, grant: TokenGrant
    ) -> TokenRecord:
        now = self._clock.now()
        fresh = current.with_changes(
            access_token=grant.access_token,
            refresh_token=grant.refresh_token,
            access_expires_at=grant.access_expires_at,
            refresh_expires_at=grant.refresh_expires_at or current.refresh_expires_at,
            refresh_hard_expires_at=grant.refresh_hard_expires_at
            or current.refresh_hard_expires_at,
            needs_reconnect=False,
            updated_at=now,
            version=current.version + 1,
        )
        # On disk before anything uses it: the store may not take it, the process may die.
        await self._memory.hold(fresh)
        await self._memory.refresh_answered(realm_id)
        stored = await self._put_durably(realm_id, fresh, current.version)
        self._metrics.token_refreshes.labels(result="success").inc()
        self._outcomes.succeeded(realm_id, now)
        log.info("token_refreshed", realm_id=realm_id, version=stored.version)
        if current.needs_reconnect:
            self._observer.token_event(realm_id, "reconnected", stored)
        self._observer.token_event(realm_id, "refreshed", stored)
        return stored

    async def _put_durably(self, realm_id: str, fresh: TokenRecord, base: int) -> TokenRecord:
        """Store a new pair; until the store has it, it stays in the spill file."""
        delay = 0.1
        last_error: StateUnavailable | None = None
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                stored = await self._store.put(fresh, expected_version=base)
                if stored is not None:
                    if await self._store.replicated(realm_id):
                        await self._memory.stored(stored)
                    else:
                        self._memory.remember(stored)  # stays spilled until replicated
                    return stored
                # Someone wrote past us despite the lock (an import, or the store went
                # back in time): reconciling keeps whichever pair is the newer.
                winner = await self._memory.read(realm_id)
            except StateUnavailable as exc:
                last_error = exc
                log.error("token_store_retry", realm_id=realm_id, attempt=attempt, **failure(exc))
                await self._clock.sleep(delay)
                delay *= 2
                continue
            if winner is None:
                raise UnknownRealm(f"realm {realm_id} was removed during a refresh")
            if winner.refresh_token != fresh.refresh_token:
                log.warning("token_refresh_superseded", realm_id=realm_id)
            return winner
        # The backend stayed down: the pair is in the spill file and served from there;
        # it is stored as soon as the backend answers (before any further refresh).
        log.critical("token_store_failed_pending", realm_id=realm_id, spilled=True)
        if last_error is not None:
            self._memory.down(last_error)  # its recovery reconciles the spilled pair
        return fresh
