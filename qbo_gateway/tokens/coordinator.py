"""Exactly one refresh of a realm at a time: in this process, then across replicas.

Two refreshes of one realm can sever it for good (Intuit may kill the old refresh token at
once), so the order is oauth2-proxy's: in-process single flight (`single_flight`, the same
utility the read cache uses; what is added here is the refresh mode a caller joins and the
forced refresh that waits for the running one to land), then a cross-replica lock
with an owner and a lease, then the locked refresh (`refresh`). The refresh runs in a
task of its own, shielded from its callers: a caller that leaves, or a shutdown mid-refresh,
still ends with the new pair stored (`drain()` waits for it). While the state backend is
unreachable no refresh is tried at all: without the shared lock two replicas could refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import structlog

from qbo_gateway.faults import GatewayError, ReconnectRequired, UnknownRealm, UpstreamUnavailable
from qbo_gateway.metrics import Metrics
from qbo_gateway.single_flight import SingleFlight
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.locks import Locks
from qbo_gateway.tokens.lease import Lease, LeaseLost
from qbo_gateway.tokens.local_copy import TokenMemory
from qbo_gateway.tokens.policy import Mode, RefreshPolicy
from qbo_gateway.tokens.records import TokenRecord
from qbo_gateway.tokens.refresh import LockedRefresh

log = structlog.get_logger(__name__)

LOCK_POLL_MAX = 0.1


class RefreshCoordinator:
    """Runs each realm's refresh once: joins the one in flight, else locks and refreshes."""

    def __init__(
        self,
        *,
        locks: Locks,
        metrics: Metrics,
        memory: TokenMemory,
        policy: RefreshPolicy,
        locked: LockedRefresh,
        lock_lease: float,
    ) -> None:
        self._locks = locks
        self._metrics = metrics
        self._memory = memory
        self._policy = policy
        self._locked = locked
        self._lock_lease = lock_lease
        self._flights: SingleFlight[str, TokenRecord] = SingleFlight("token-refresh")
        # The mode each realm's latest refresh was started with (read while it is in flight).
        self._flight_modes: dict[str, Mode] = {}
        self._skip_noted: set[str] = set()
        self._unreleased: dict[str, str] = {}  # lock -> our owner token, release failed

    async def refresh(
        self, realm_id: str, mode: Mode, used_token: str | None = None
    ) -> TokenRecord:
        """Join the realm's refresh in flight, or start one; the caller may leave safely."""
        record: TokenRecord | None = None
        for _ in range(2):
            flight = self._flights.running(realm_id)
            if flight is not None and mode is Mode.FORCE:
                # An admin wants a refresh after now: let the running one land, then refresh.
                with contextlib.suppress(GatewayError):
                    await asyncio.shield(flight)
                flight = self._flights.running(realm_id)
            joined_mode = self._flight_modes.get(realm_id) if flight is not None else None
            if flight is None:
                self._flight_modes[realm_id] = mode
                flight = self._flights.start(realm_id, self._flow(realm_id, mode, used_token))
            record = await asyncio.shield(flight)
            # A joined refresh of another kind may not have done what this caller needs
            # (a "due" check does not refresh a token QBO just refused): go once more.
            if joined_mode in (None, mode) or not self._policy.needs(
                record, mode, used_token, None
            ):
                return record
        assert record is not None
        return record

    async def settled(self, realm_id: str) -> None:
        """Wait for the realm's refresh in flight, if any (its outcome is its own)."""
        flight = self._flights.running(realm_id)
        if flight is not None:
            with contextlib.suppress(GatewayError, StateUnavailable):
                await asyncio.shield(flight)

    async def drain(self) -> None:
        """Wait for refreshes in flight (cancelling this wait cancels them)."""
        await self._flights.drain()

    async def _flow(self, realm_id: str, mode: Mode, used_token: str | None) -> TokenRecord:
        seen = self._memory.cached(realm_id)
        seen_version = seen.version if seen is not None else None
        if not self._memory.backend_up():
            return self._no_refresh(realm_id, mode, "the state backend is unreachable")
        owner = uuid.uuid4().hex
        lock = f"token:{realm_id}"
        try:
            other = await self._take_lock(lock, owner, realm_id, mode, used_token, seen_version)
        except StateUnavailable as exc:
            self._memory.down(exc)
            return self._no_refresh(realm_id, mode, "the state backend is unreachable")
        self._skip_noted.discard(realm_id)
        if other is not None:
            return other  # another replica refreshed while we waited: use its pair
        lease = Lease(self._locks, lock, owner, self._lock_lease)
        lease.keep()
        try:
            return await self._locked.run(realm_id, mode, used_token, lease.confirm)
        except StateUnavailable as exc:
            self._memory.down(exc)
            return self._no_refresh(realm_id, mode, "the state backend is unreachable")
        except LeaseLost:
            return self._no_refresh(realm_id, mode, "the refresh lock lapsed")
        finally:
            await lease.stop()
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
        mode: Mode,
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
            record = await self._memory.read(realm_id)
            if record is None:
                raise UnknownRealm(f"no tokens for realm {realm_id}")
            if record.needs_reconnect and mode is not Mode.FORCE:
                raise ReconnectRequired(f"realm {realm_id} must be reconnected")
            if not self._policy.needs(record, mode, used_token, seen_version):
                return record
        return None

    def _no_refresh(self, realm_id: str, mode: Mode, why: str) -> TokenRecord:
        self._metrics.token_refreshes.labels(result="skipped").inc()
        if realm_id not in self._skip_noted:  # once per outage, not once per request
            self._skip_noted.add(realm_id)
            log.warning("token_refresh_skipped", realm_id=realm_id, reason=why)
        current = self._memory.cached(realm_id)
        if current is None:
            raise UpstreamUnavailable(why, reason="state_unavailable")
        return self._policy.fallback(current, mode, why)
