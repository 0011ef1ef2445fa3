"""Reconciliation: after the store answers again, the newest pair of a realm wins.

The store can come back from an outage without a pair this replica holds (the write never
reached it), empty (restarted without persistence), or holding an older version than this
replica already saw it hold (restarted from an old snapshot, a failover that lost writes).
Under strict rotation an older pair is a dead refresh token, so each realm's newest known
pair (higher version, then later issue time) is written back at its own version, and a
store that went back in time is reported as a rollback. Nothing is ever dropped because
the store answered: a spilled pair leaves the spill file only once the store holds it or a
newer one.
"""

from __future__ import annotations

import structlog

from qbo_gateway.observe import Observer
from qbo_gateway.tokens.records import TokenRecord, TokenStore, is_newer
from qbo_gateway.tokens.spill import SpillFile

log = structlog.get_logger(__name__)


def newest(*records: TokenRecord | None) -> TokenRecord | None:
    best: TokenRecord | None = None
    for record in records:
        if record is not None and (best is None or is_newer(record, best)):
            best = record
    return best


class Reconciler:
    def __init__(self, *, store: TokenStore, spill: SpillFile, observer: Observer) -> None:
        self._store = store
        self._spill = spill
        self._observer = observer

    async def settle(
        self,
        realm_id: str,
        stored: TokenRecord | None,
        known: TokenRecord | None,
        high_water: int | None,
    ) -> TokenRecord | None:
        """What the store holds once this replica's newest pair of the realm is in it.

        `stored` is what the store just answered, `known` the newest record this replica
        holds in memory, `high_water` the highest version the store acknowledged to it.
        """
        spilled = self._spill.get(realm_id)
        best = newest(spilled, known)
        if best is None or (stored is not None and not is_newer(best, stored)):
            if spilled is not None and stored is not None:
                await self._release(realm_id, stored)
            return stored
        rolled_back = high_water is not None and (stored is None or stored.version < high_water)
        if rolled_back:
            log.error(
                "token_store_rollback",
                realm_id=realm_id,
                store_version=None if stored is None else stored.version,
                seen_version=high_water,
                restored_version=best.version,
                note="the token store lost writes (empty, old snapshot or failover); "
                "the newest pair is written back",
            )
            self._observer.token_event(realm_id, "store_rolled_back", best)
        restored = await self._store.restore(best)
        if spilled is not None and not is_newer(spilled, restored):
            await self._release(realm_id, restored)
        log.warning(
            "token_pending_stored" if spilled is best else "token_restored",
            realm_id=realm_id,
            version=restored.version,
            store_version=None if stored is None else stored.version,
        )
        return restored

    async def _release(self, realm_id: str, stored: TokenRecord) -> None:
        """The store holds `stored`: the spilled pair goes once a replica has it too."""
        if await self._store.replicated(realm_id):
            await self._spill.release(realm_id, stored.version)
