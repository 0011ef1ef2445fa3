"""After a crash, an outage or before exit: get every realm back to a known, stored pair.

Three moments leave a realm's tokens in doubt, and each has one answer here:
- the store comes back (or the process starts): write back the pairs this replica holds
  that the store lacks (`reconcile`);
- the process starts after a crash or a lost token-call answer: a realm whose refresh
  outcome is unknown is checked at once by trying its stored refresh token
  (`check_unknown`). Under strict rotation that is the only test that tells: if Intuit
  rotated it, the token is dead anyway and the realm needs reconnecting (the truth); if
  not, the refresh succeeds and its pair is stored;
- SIGTERM: refreshes get the rest of the shutdown budget (`drain`); their pairs are
  spilled before the store write, so cutting them off loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from qbo_gateway.faults import GatewayError
from qbo_gateway.logs import failure
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.tokens.coordinator import RefreshCoordinator
from qbo_gateway.tokens.local_copy import TokenMemory
from qbo_gateway.tokens.policy import Mode

log = structlog.get_logger(__name__)


class Recovery:
    def __init__(self, *, memory: TokenMemory, coordinator: RefreshCoordinator) -> None:
        self._memory = memory
        self._coordinator = coordinator
        self._reconciling: asyncio.Task[int] | None = None

    async def reconcile(self) -> int:
        """Write back every pair this replica holds that the store lacks; returns how
        many realms were checked."""
        if not self._memory.backend_up():
            return 0
        try:
            return await self._memory.reconcile()
        except StateUnavailable as exc:
            self._memory.down(exc)
            return 0

    def store_back(self) -> None:
        """The store answers again (called by the availability tracker)."""
        if self._reconciling is None or self._reconciling.done():
            with contextlib.suppress(RuntimeError):  # no running loop (sync callers)
                self._reconciling = asyncio.get_running_loop().create_task(
                    self.reconcile(), name="token-reconcile"
                )

    async def check_unknown(self) -> list[str]:
        """Settle every realm whose refresh outcome is unknown; returns those still unknown."""
        for intent in self._memory.spill.intents():
            realm_id = intent.realm_id
            try:
                record = await self._memory.read(realm_id)
                if record is None or record.version > intent.version:
                    # Removed, or the refresh did land (its pair was spilled and written).
                    await self._memory.refresh_answered(realm_id)
                    continue
                # A refresh already under way (the background refresher) may settle it.
                await self._coordinator.settled(realm_id)
                if self._memory.spill.intent(realm_id) is None:
                    continue
                log.warning("token_refresh_outcome_unknown", realm_id=realm_id, check="refresh")
                await self._coordinator.refresh(realm_id, Mode.FORCE)
            except (GatewayError, StateUnavailable) as exc:
                # Reconnect-required is a known outcome (answered above); anything else
                # leaves the realm unknown until its next refresh.
                log.warning("token_refresh_outcome_check", realm_id=realm_id, **failure(exc))
        return [i.realm_id for i in self._memory.spill.intents()]

    async def drain(self, budget: float | None) -> None:
        """Wait for refreshes and token writes in flight, at most `budget` seconds."""
        try:
            async with asyncio.timeout(budget):
                await self._coordinator.drain()
                if self._reconciling is not None:
                    with contextlib.suppress(Exception):
                        await self._reconciling
        except TimeoutError:
            log.error(
                "token_drain_timed_out",
                budget_seconds=budget,
                spilled_realms=self._memory.pending_realms(),
                unknown_outcomes=[i.realm_id for i in self._memory.spill.intents()],
                note="pairs the store has not taken are in the spill file and cut-off "
                "token calls are noted there; the next start settles both",
            )
