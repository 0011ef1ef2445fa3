"""Every realm's access token, fresh, with exactly one refresh at a time.

Intuit rotates refresh tokens and the old one may die at once, so two refreshes of one realm
(two requests, two replicas) can sever it for good, and so can a new pair that is lost. The
order here is oauth2-proxy's: in-process single-flight, then a cross-replica lock with an
owner and a lease, then re-read the store, re-check, call Intuit, store the new pair durably
(compare-and-set on the version) and only then use it and release the lock. The token call
and the store run in a task of their own, shielded from the caller: a caller that leaves or
a shutdown mid-refresh still ends with the new pair stored (`drain()` waits for it).

While the state backend is unreachable the last record read is served until its access
token expires and no refresh is tried: without the shared lock two replicas could refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import random
import uuid
from dataclasses import dataclass

import structlog

from qbo_gateway.clock import Clock
from qbo_gateway.crypto import TokenDecryptError
from qbo_gateway.faults import GatewayError, ReconnectRequired, UnknownRealm, UpstreamUnavailable
from qbo_gateway.metrics import Metrics
from qbo_gateway.oauth import (
    InvalidClient,
    InvalidGrant,
    OAuthClient,
    OAuthError,
    TokenGrant,
    TransientTokenError,
)
from qbo_gateway.observe import Observer, TokenEvent
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.base import Locks, StateUnavailable, TokenRecord, TokenStatus, TokenStore

log = structlog.get_logger(__name__)

TOKEN_ATTEMPTS = 3
BACKOFF_BASE = 0.5  # seconds before the second attempt; doubles, with jitter
DAILY_REFRESH = 23 * 3600.0  # use every refresh token at least once a day
RECHECK_SECONDS = 5.0  # how long an in-memory record is trusted before the store is re-read
STORE_ATTEMPTS = 6
LOCK_POLL_MAX = 0.1
# After a failed token call a still-valid access token is used without asking Intuit again
# for this long, so a down token endpoint costs each request nothing and Intuit no storm.
REFRESH_COOLDOWN = 30.0


class TokenExists(Exception):
    """The realm already has tokens; importing over them needs `force`."""


class _Mode(enum.Enum):
    DUE = "due"  # refresh only if inside the margin or the refresh token is a day old
    UNAUTHORIZED = "unauthorized"  # QBO refused `used_token`: refresh unless it changed
    FORCE = "force"  # admin: always refresh, even a reconnect-required realm


@dataclass
class _Pending:
    """A refreshed pair the store did not take yet (backend failed mid-refresh)."""

    record: TokenRecord
    base_version: int


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
        lock_lease: float = 60,
        token_timeout: float = 15,
        availability: BackendAvailability | None = None,
    ) -> None:
        # The lease must outlive every attempt of one refresh, or a second replica could
        # take the lock while the first still holds a live token call.
        worst = TOKEN_ATTEMPTS * token_timeout + BACKOFF_BASE * 1.5 * (2**TOKEN_ATTEMPTS)
        lock_lease = max(lock_lease, worst + 10)
        self._store = store
        self._locks = locks
        self._oauth = oauth
        self._clock = clock
        self._metrics = metrics
        self._observer = observer
        self._margin = margin
        self._lock_lease = lock_lease
        self._token_timeout = token_timeout
        self._availability = availability
        self._cache: dict[str, tuple[TokenRecord, float]] = {}
        self._flights: dict[str, asyncio.Task[TokenRecord]] = {}
        self._flight_modes: dict[str, _Mode] = {}
        self._pending: dict[str, _Pending] = {}
        self._last_refresh_at: dict[str, float] = {}
        self._last_error: dict[str, str] = {}
        self._failing: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._skip_noted: set[str] = set()
        self._unreleased: dict[str, str] = {}  # lock -> our owner token, release failed
        self.config_error: str | None = None  # invalid_client: the app's, not a realm's

    # --- the request path -------------------------------------------------------------

    async def access_token(self, realm_id: str) -> str:
        record = await self._current(realm_id)
        if record.needs_reconnect:
            raise ReconnectRequired(f"realm {realm_id} must be reconnected")
        now = self._clock.now()
        if record.access_expires_at - now > self._margin:
            return record.access_token
        if record.access_expires_at > now and now < self._retry_at.get(realm_id, 0.0):
            return record.access_token  # a token call just failed: no retry per request
        return (await self._refresh(realm_id, _Mode.DUE)).access_token

    async def after_unauthorized(self, realm_id: str, used_token: str) -> str | None:
        """QBO refused `used_token` (401/3200): a token to replay with once, or None.

        Raises ReconnectRequired when the realm's refresh token is dead (now or already),
        so the caller gets the gateway's verdict (or a degraded read), not a bare 401.
        """
        try:
            record = await self._read(realm_id)
        except StateUnavailable:
            record = self._cached(realm_id)
        except GatewayError:
            return None
        if record is None:
            return None
        if record.needs_reconnect:
            raise ReconnectRequired("The realm's refresh token was refused; reconnect it")
        if record.access_token != used_token and record.access_expires_at > self._clock.now():
            return record.access_token
        try:
            fresh = await self._refresh(realm_id, _Mode.UNAUTHORIZED, used_token)
        except ReconnectRequired:
            raise
        except GatewayError:
            return None
        return fresh.access_token if fresh.access_token != used_token else None

    # --- operations -------------------------------------------------------------------

    async def force_refresh(self, realm_id: str) -> TokenStatus:
        if not self._backend_up():
            raise UpstreamUnavailable("the state backend is unreachable: refresh refused")
        record = await self._refresh(realm_id, _Mode.FORCE)
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
        self._remember(stored)
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
        self._pending.pop(realm_id, None)
        self._failing.discard(realm_id)
        self._last_error.pop(realm_id, None)
        self._remember(stored)
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
        self._cache.pop(realm_id, None)
        self._pending.pop(realm_id, None)
        if removed:
            log.info("tokens_removed", realm_id=realm_id)
            self._observer.token_event(realm_id, "removed", None)
        return removed

    async def status(self, realm_id: str) -> TokenStatus | None:
        try:
            record = await self._read(realm_id)
        except StateUnavailable:
            record = self._cached(realm_id)
        return None if record is None else self._status(record)

    async def statuses(self) -> list[TokenStatus]:
        return [self._status(r) for r in await self._records()]

    async def realm_ids(self) -> list[str]:
        return [r.realm_id for r in await self._records()]

    async def refresh_due_realms(self) -> int:
        """One pass of the background refresher; returns how many realms it refreshed."""
        if not self._backend_up():
            return 0
        for realm_id in list(self._pending):
            with contextlib.suppress(StateUnavailable):
                await self._flush_pending(realm_id)
        try:
            records = await self._store.list_records()
        except StateUnavailable as exc:
            self._down(exc)
            return 0
        now = self._clock.now()
        due = [
            r
            for r in records
            if not r.needs_reconnect
            and self._is_due(r)
            and not (r.access_expires_at > now and now < self._retry_at.get(r.realm_id, 0.0))
        ]
        gate = asyncio.Semaphore(4)

        async def one(record: TokenRecord) -> bool:
            async with gate:
                try:
                    fresh = await self._refresh(record.realm_id, _Mode.DUE)
                except GatewayError:
                    return False
                return fresh.version > record.version and not fresh.needs_reconnect

        results = await asyncio.gather(*(one(r) for r in due))
        return sum(results)

    async def run_refresher(self, interval: float) -> None:
        while True:
            try:
                await self.refresh_due_realms()
            except asyncio.CancelledError:
                raise
            except Exception:  # the refresher must outlive any one failure
                log.exception("token_refresher_failed")
            await self._clock.sleep(interval)

    async def drain(self) -> None:
        """Wait for refreshes in flight (they are never cut off)."""
        while self._flights:
            await asyncio.gather(*self._flights.values(), return_exceptions=True)

    # --- reading ----------------------------------------------------------------------

    def _backend_up(self) -> bool:
        return self._availability is None or self._availability.up

    def _down(self, exc: BaseException) -> None:
        if self._availability is not None:
            self._availability.mark_down(exc)

    def _remember(self, record: TokenRecord) -> None:
        self._cache[record.realm_id] = (record, self._clock.monotonic())

    def _cached(self, realm_id: str) -> TokenRecord | None:
        pending = self._pending.get(realm_id)
        if pending is not None:
            return pending.record
        hit = self._cache.get(realm_id)
        return None if hit is None else hit[0]

    async def _read(self, realm_id: str) -> TokenRecord | None:
        """The store's record (StateUnavailable when the backend is down)."""
        if not self._backend_up():
            raise StateUnavailable("state backend is down")
        try:
            if realm_id in self._pending:
                await self._flush_pending(realm_id)
            record = await self._store.get(realm_id)
        except StateUnavailable as exc:
            self._down(exc)
            raise
        except TokenDecryptError as exc:
            log.error("token_record_unreadable", realm_id=realm_id, error=str(exc))
            raise UnknownRealm(
                f"the stored tokens of realm {realm_id} cannot be decrypted with QBO_TOKEN_KEYS"
            ) from exc
        if record is None:
            self._cache.pop(realm_id, None)
        else:
            self._remember(record)
        return record

    async def _current(self, realm_id: str) -> TokenRecord:
        hit = self._cache.get(realm_id)
        if (
            hit is not None
            and realm_id not in self._pending
            and not hit[0].needs_reconnect
            and hit[0].access_expires_at - self._clock.now() > self._margin
            and self._clock.monotonic() - hit[1] < RECHECK_SECONDS
        ):
            return hit[0]
        try:
            record = await self._read(realm_id)
        except StateUnavailable as exc:
            cached = self._cached(realm_id)
            if cached is None:
                raise UpstreamUnavailable(
                    "the token store is unreachable", reason="state_unavailable"
                ) from exc
            return cached
        if record is None:
            raise UnknownRealm(f"no tokens for realm {realm_id}")
        return record

    async def _records(self) -> list[TokenRecord]:
        if self._backend_up():
            try:
                records = await self._store.list_records()
            except StateUnavailable as exc:
                self._down(exc)
            else:
                for record in records:
                    self._remember(record)
                return records
        realms = sorted(set(self._cache) | set(self._pending))
        return [r for r in (self._cached(realm) for realm in realms) if r is not None]

    def _status(self, record: TokenRecord) -> TokenStatus:
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

    def _is_due(self, record: TokenRecord) -> bool:
        now = self._clock.now()
        return (
            record.access_expires_at - now <= self._margin
            or now - record.updated_at >= DAILY_REFRESH
        )

    def _needs(
        self, record: TokenRecord, mode: _Mode, used_token: str | None, seen_version: int | None
    ) -> bool:
        if mode is _Mode.DUE:
            return self._is_due(record)
        if mode is _Mode.UNAUTHORIZED:
            return record.access_token == used_token
        return seen_version is None or record.version <= seen_version

    # --- refreshing -------------------------------------------------------------------

    async def _refresh(
        self, realm_id: str, mode: _Mode, used_token: str | None = None
    ) -> TokenRecord:
        """Join the realm's refresh in flight, or start one; the caller may leave safely."""
        record: TokenRecord | None = None
        for _ in range(2):
            flight = self._flights.get(realm_id)
            if flight is not None and mode is _Mode.FORCE:
                # An admin wants a refresh after now: let the running one land, then refresh.
                with contextlib.suppress(GatewayError):
                    await asyncio.shield(flight)
                flight = self._flights.get(realm_id)
            joined_mode = self._flight_modes.get(realm_id) if flight is not None else None
            if flight is None:
                flight = asyncio.get_running_loop().create_task(
                    self._refresh_flow(realm_id, mode, used_token),
                    name=f"token-refresh-{realm_id}",
                )
                self._flights[realm_id] = flight
                self._flight_modes[realm_id] = mode
                flight.add_done_callback(functools.partial(self._landed, realm_id))
            record = await asyncio.shield(flight)
            # A joined refresh of another kind may not have done what this caller needs
            # (a "due" check does not refresh a token QBO just refused): go once more.
            if joined_mode in (None, mode) or not self._needs(record, mode, used_token, None):
                return record
        assert record is not None
        return record

    def _landed(self, realm_id: str, task: asyncio.Task[TokenRecord]) -> None:
        if self._flights.get(realm_id) is task:
            del self._flights[realm_id]
            self._flight_modes.pop(realm_id, None)
        if not task.cancelled():
            task.exception()  # retrieved here: every caller may have left

    async def _refresh_flow(
        self, realm_id: str, mode: _Mode, used_token: str | None
    ) -> TokenRecord:
        seen = self._cached(realm_id)
        seen_version = seen.version if seen is not None else None
        if not self._backend_up():
            return self._no_refresh(realm_id, mode, "the state backend is unreachable")
        owner = uuid.uuid4().hex
        lock = f"token:{realm_id}"
        try:
            other = await self._take_lock(lock, owner, realm_id, mode, used_token, seen_version)
        except StateUnavailable as exc:
            self._down(exc)
            return self._no_refresh(realm_id, mode, "the state backend is unreachable")
        self._skip_noted.discard(realm_id)
        if other is not None:
            return other  # another replica refreshed while we waited: use its pair
        try:
            return await self._refresh_locked(realm_id, mode, used_token)
        except StateUnavailable as exc:
            self._down(exc)
            return self._no_refresh(realm_id, mode, "the state backend is unreachable")
        finally:
            try:
                await self._locks.release(lock, owner)
            except StateUnavailable:
                # Free it when the backend answers again rather than waiting out the lease.
                self._unreleased[lock] = owner

    async def _take_lock(
        self,
        lock: str,
        owner: str,
        realm_id: str,
        mode: _Mode,
        used_token: str | None,
        seen_version: int | None,
    ) -> TokenRecord | None:
        """None once the lock is ours; a record when another holder's refresh made ours moot."""
        stale_owner = self._unreleased.get(lock)
        if stale_owner is not None:
            await self._locks.release(lock, stale_owner)
            del self._unreleased[lock]
        poll = 0.005
        while not await self._locks.acquire(lock, owner, self._lock_lease):
            # Another replica is refreshing. This waits for another process, in real time
            # (the lease lapses in real time too), so it is not the injected clock.
            await asyncio.sleep(poll)
            poll = min(poll * 2, LOCK_POLL_MAX)
            record = await self._read(realm_id)
            if record is None:
                raise UnknownRealm(f"no tokens for realm {realm_id}")
            if record.needs_reconnect and mode is not _Mode.FORCE:
                raise ReconnectRequired(f"realm {realm_id} must be reconnected")
            if not self._needs(record, mode, used_token, seen_version):
                return record
        return None

    async def _refresh_locked(
        self, realm_id: str, mode: _Mode, used_token: str | None
    ) -> TokenRecord:
        current = await self._read(realm_id)
        if current is None:
            raise UnknownRealm(f"no tokens for realm {realm_id}")
        if current.needs_reconnect and mode is not _Mode.FORCE:
            raise ReconnectRequired(f"realm {realm_id} must be reconnected")
        if mode is not _Mode.FORCE and not self._needs(current, mode, used_token, None):
            return current
        try:
            grant = await self._call_token_endpoint(realm_id, current)
        except InvalidGrant:
            return await self._invalid_grant(realm_id, current)
        except InvalidClient as exc:
            self._retry_at[realm_id] = self._clock.now() + REFRESH_COOLDOWN
            self._metrics.token_refreshes.labels(result="invalid_client").inc()
            self.config_error = "Intuit refused the app's client id/secret (invalid_client)"
            log.error(
                "token_refresh_invalid_client", error=str(exc), fix="check QBO_CLIENT_ID/SECRET"
            )
            return self._fallback(current, mode, self.config_error)
        except OAuthError as exc:
            self._retry_at[realm_id] = self._clock.now() + REFRESH_COOLDOWN
            self._metrics.token_refreshes.labels(result="failure").inc()
            self._failing.add(realm_id)
            self._last_error[realm_id] = str(exc)
            log.warning("token_refresh_failed", realm_id=realm_id, error=str(exc))
            self._observer.token_event(realm_id, "refresh_failed", current)
            return self._fallback(current, mode, str(exc))
        return await self._store_grant(realm_id, current, grant)

    async def _call_token_endpoint(self, realm_id: str, current: TokenRecord) -> TokenGrant:
        for attempt in range(1, TOKEN_ATTEMPTS + 1):
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
            log.warning("token_refresh_retry", realm_id=realm_id, attempt=attempt, error=str(error))
            await self._clock.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _invalid_grant(self, realm_id: str, current: TokenRecord) -> TokenRecord:
        # Another replica (or an import) may have rotated the token under us: look once.
        again = await self._store.get(realm_id)
        if again is not None and again.refresh_token != current.refresh_token:
            self._remember(again)
            if again.needs_reconnect:
                raise ReconnectRequired(f"realm {realm_id} must be reconnected")
            return again
        self._metrics.token_refreshes.labels(result="invalid_grant").inc()
        self._failing.discard(realm_id)
        self._last_error[realm_id] = "invalid_grant: Intuit refused the refresh token"
        flagged = current
        if again is not None and not again.needs_reconnect:
            stored = await self._store.put(
                again.with_changes(needs_reconnect=True), expected_version=again.version
            )
            flagged = stored or again.with_changes(needs_reconnect=True)
        elif again is not None:
            flagged = again
        self._remember(flagged)
        log.error("token_reconnect_required", realm_id=realm_id)
        self._observer.token_event(realm_id, "reconnect_required", flagged)
        raise ReconnectRequired(f"realm {realm_id} must be reconnected")

    def _fallback(self, current: TokenRecord, mode: _Mode, why: str) -> TokenRecord:
        """After a failed token call: the current token while it lives, never cleared."""
        if mode is not _Mode.FORCE and current.access_expires_at > self._clock.now():
            return current
        raise UpstreamUnavailable(f"token refresh failed: {why}", reason="token_refresh")

    def _no_refresh(self, realm_id: str, mode: _Mode, why: str) -> TokenRecord:
        self._metrics.token_refreshes.labels(result="skipped").inc()
        if realm_id not in self._skip_noted:  # once per outage, not once per request
            self._skip_noted.add(realm_id)
            log.warning("token_refresh_skipped", realm_id=realm_id, reason=why)
        current = self._cached(realm_id)
        if current is None:
            raise UpstreamUnavailable(why, reason="state_unavailable")
        return self._fallback(current, mode, why)

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
        )
        stored = await self._put_durably(realm_id, fresh, current.version)
        self._metrics.token_refreshes.labels(result="success").inc()
        self._last_refresh_at[realm_id] = now
        self._last_error.pop(realm_id, None)
        self._failing.discard(realm_id)
        self._retry_at.pop(realm_id, None)
        self.config_error = None
        log.info("token_refreshed", realm_id=realm_id, version=stored.version)
        if current.needs_reconnect:
            self._observer.token_event(realm_id, "reconnected", stored)
        self._observer.token_event(realm_id, "refreshed", stored)
        return stored

    async def _put_durably(self, realm_id: str, fresh: TokenRecord, base: int) -> TokenRecord:
        """Store a new pair before anyone uses it; the only copy must never be dropped."""
        delay = 0.1
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                stored = await self._store.put(fresh, expected_version=base)
            except StateUnavailable as exc:
                log.error("token_store_retry", realm_id=realm_id, attempt=attempt, error=str(exc))
                await self._clock.sleep(delay)
                delay *= 2
                continue
            if stored is None:
                # Someone wrote past us despite the lock (an import or connect): theirs is
                # an operator's choice and newer; our pair is superseded.
                winner = await self._store.get(realm_id)
                log.warning("token_refresh_superseded", realm_id=realm_id)
                if winner is None:
                    raise UnknownRealm(f"realm {realm_id} was removed during a refresh")
                self._remember(winner)
                return winner
            self._pending.pop(realm_id, None)
            self._remember(stored)
            return stored
        # The backend stayed down: keep the only copy in memory, serve it, and store it as
        # soon as the backend answers (before any further refresh of this realm).
        self._pending[realm_id] = _Pending(fresh, base)
        log.critical("token_store_failed_pending", realm_id=realm_id)
        return fresh

    async def _flush_pending(self, realm_id: str) -> None:
        pending = self._pending.get(realm_id)
        if pending is None:
            return
        stored = await self._store.put(pending.record, expected_version=pending.base_version)
        del self._pending[realm_id]
        if stored is None:
            log.warning("token_pending_superseded", realm_id=realm_id)
        else:
            log.info("token_pending_stored", realm_id=realm_id, version=stored.version)
            self._remember(stored)
