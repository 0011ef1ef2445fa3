"""The in-process copy of every realm's tokens, and reading the store through it.

The state backend can be unreachable for a while. Requests keep working on the last record
read until its access token expires, so every read of the store goes through here and leaves
its record behind. A refreshed pair the store has not acknowledged is the only copy of a
rotated refresh token (the old one may already be dead at Intuit): it is kept in the spill
file (`token_spill`) and reconciled (`token_reconcile`) before anything else reads or
refreshes the realm, never dropped. Every answer of the store is checked against the
highest version it acknowledged to this replica, so a store that went back in time (an old
snapshot, a failover that lost writes) is caught on the first read, not at the next
refresh when the dead refresh token would sever the realm.
"""

from __future__ import annotations

import structlog

from qbo_gateway.clock import Clock
from qbo_gateway.faults import UnknownRealm, UpstreamUnavailable
from qbo_gateway.logs import failure
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.tokens.crypto import TokenDecryptError
from qbo_gateway.tokens.reconcile import Reconciler, newest
from qbo_gateway.tokens.records import TokenRecord, TokenStore, is_newer
from qbo_gateway.tokens.spill import Intent, SpillFile

log = structlog.get_logger(__name__)

RECHECK_SECONDS = 5.0  # how long an in-memory record is trusted before the store is re-read


class TokenMemory:
    def __init__(
        self,
        *,
        store: TokenStore,
        clock: Clock,
        availability: BackendAvailability | None,
        spill: SpillFile,
        reconciler: Reconciler,
    ) -> None:
        self._store = store
        self._clock = clock
        self._availability = availability
        self.spill = spill
        self._reconciler = reconciler
        self._cache: dict[str, tuple[TokenRecord, float]] = {}
        self._high_water: dict[str, int] = {}  # highest version the store acknowledged

    def backend_up(self) -> bool:
        return self._availability is None or self._availability.up

    def down(self, exc: BaseException) -> None:
        if self._availability is not None:
            self._availability.mark_down(exc)

    def remember(self, record: TokenRecord) -> None:
        """`record` is what the store holds (it answered or acknowledged it)."""
        realm_id = record.realm_id
        hit = self._cache.get(realm_id)
        if hit is not None and hit[0] == record:
            # The same pair read again (every listing reads them all): keep the copy held,
            # so the new one dies young instead of scattering 10,000 records over the heap.
            self._cache[realm_id] = (hit[0], self._clock.monotonic())
        elif hit is None or not is_newer(hit[0], record):
            self._cache[realm_id] = (record, self._clock.monotonic())
        self._high_water[realm_id] = max(record.version, self._high_water.get(realm_id, 0))

    def cached(self, realm_id: str) -> TokenRecord | None:
        hit = self._cache.get(realm_id)
        return newest(self.spill.get(realm_id), None if hit is None else hit[0])

    def forget(self, realm_id: str) -> None:
        """The realm was removed or replaced by an operator: what was known is void."""
        self._cache.pop(realm_id, None)
        self._high_water.pop(realm_id, None)

    async def hold(self, record: TokenRecord) -> None:
        """Keep a pair durably until the store has it (before anything uses it)."""
        try:
            await self.spill.keep(record)
        except OSError as exc:
            # Still served from memory and offered to the store; but one crash now loses it.
            log.critical("token_spill_write_failed", realm_id=record.realm_id, **failure(exc))

    async def stored(self, record: TokenRecord) -> None:
        """The store acknowledged `record`: nothing older is pending any more."""
        self.remember(record)
        await self._release(record.realm_id, record.version)

    async def settle(self, realm_id: str) -> None:
        """An operator stored new tokens: earlier pairs of the realm are void."""
        self.forget(realm_id)
        await self._release(realm_id, None)
        await self.refresh_answered(realm_id)

    async def _release(self, realm_id: str, version: int | None) -> None:
        try:
            await self.spill.release(realm_id, version)
        except OSError as exc:
            log.error("token_spill_write_failed", realm_id=realm_id, **failure(exc))

    async def refresh_begins(self, current: TokenRecord, now: float) -> None:
        try:
            await self.spill.begin(Intent(current.realm_id, current.version, now))
        except OSError as exc:
            log.error("token_refresh_intent_failed", realm_id=current.realm_id, **failure(exc))

    async def refresh_answered(self, realm_id: str) -> None:
        """The refresh's outcome is known (and a new pair, if any, is spilled)."""
        try:
            await self.spill.resolve(realm_id)
        except OSError as exc:
            log.error("token_refresh_intent_failed", realm_id=realm_id, **failure(exc))

    def outcome_unknown(self, realm_id: str) -> bool:
        return self.spill.intent(realm_id) is not None

    def pending_realms(self) -> list[str]:
        return self.spill.realms()

    async def read(self, realm_id: str) -> TokenRecord | None:
        """The store's record (StateUnavailable when the backend is down)."""
        if not self.backend_up():
            raise StateUnavailable("state backend is down")
        try:
            record = await self._checked(realm_id, await self._store.get(realm_id))
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

    async def _checked(self, realm_id: str, record: TokenRecord | None) -> TokenRecord | None:
        """The store's answer, once it holds nothing older than this replica knows."""
        high_water = self._high_water.get(realm_id)
        if self.spill.get(realm_id) is None and (
            high_water is None or (record is not None and record.version >= high_water)
        ):
            return record
        hit = self._cache.get(realm_id)
        return await self._reconciler.settle(
            realm_id, record, None if hit is None else hit[0], high_water
        )

    async def reconcile(self) -> int:
        """Check every realm this replica holds a pair of against the store; returns how
        many realms were checked (on start and whenever the store comes back)."""
        realms = sorted(set(self.spill.realms()) | set(self._cache))
        for realm_id in realms:
            try:
                await self.read(realm_id)
            except (UnknownRealm, TokenDecryptError):
                continue
        return len(realms)

    async def current(self, realm_id: str, margin: float) -> TokenRecord:
        """The realm's record for a request: a recent copy, the store's, or the last seen."""
        hit = self._cache.get(realm_id)
        if (
            hit is not None
            and self.spill.get(realm_id) is None
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
                out = [await self._checked(r.realm_id, r) for r in records]
            except StateUnavailable as exc:
                self.down(exc)
            else:
                for record in out:
                    if record is not None:
                        self.remember(record)
                return [r for r in out if r is not None]
        realms = sorted(set(self._cache) | set(self.spill.realms()))
        return [r for r in (self.cached(realm) for realm in realms) if r is not None]
