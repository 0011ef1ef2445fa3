"""The background refresher: refresh every realm before a request has to wait for it.

Requests refresh a token only when it is inside the margin, and a realm nobody calls would
let its refresh token age out (Intuit expects each to be used at least daily). A periodic
pass refreshes whatever is due, a few realms at a time, through the same single-flight and
lock as requests. It is also where pairs held in memory during a backend outage are stored
once the backend answers, even for realms no request touches.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from qbo_gateway.clock import Clock
from qbo_gateway.faults import GatewayError
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.tokens.coordinator import RefreshCoordinator
from qbo_gateway.tokens.local_copy import TokenMemory
from qbo_gateway.tokens.outcomes import RefreshOutcomes
from qbo_gateway.tokens.policy import Mode, RefreshPolicy
from qbo_gateway.tokens.records import TokenStore

log = structlog.get_logger(__name__)

CONCURRENT_REFRESHES = 4


class BackgroundRefresher:
    def __init__(
        self,
        *,
        store: TokenStore,
        clock: Clock,
        memory: TokenMemory,
        outcomes: RefreshOutcomes,
        policy: RefreshPolicy,
        coordinator: RefreshCoordinator,
    ) -> None:
        self._store = store
        self._clock = clock
        self._memory = memory
        self._outcomes = outcomes
        self._policy = policy
        self._coordinator = coordinator

    async def refresh_due_realms(self) -> int:
        """One pass; returns how many realms it refreshed."""
        if not self._memory.backend_up():
            return 0
        for realm_id in self._memory.pending_realms():
            with contextlib.suppress(StateUnavailable, GatewayError):
                await self._memory.read(realm_id)  # reconciles the spilled pair
        try:
            records = await self._store.list_records()
        except StateUnavailable as exc:
            self._memory.down(exc)
            return 0
        now = self._clock.now()
        due = [
            r
            for r in records
            if not r.needs_reconnect
            and self._policy.is_due(r)
            and not self._outcomes.cooling(r, now)
        ]
        todo = iter(due)
        refreshed = 0

        async def worker() -> None:
            # A few workers over one list, not a task per due realm: 10,000 realms due at
            # once (after a long outage) would otherwise be 10,000 tasks in memory.
            nonlocal refreshed
            for record in todo:
                try:
                    fresh = await self._coordinator.refresh(record.realm_id, Mode.DUE)
                except GatewayError:
                    continue
                if fresh.version > record.version and not fresh.needs_reconnect:
                    refreshed += 1

        await asyncio.gather(*(worker() for _ in range(min(CONCURRENT_REFRESHES, len(due)))))
        return refreshed

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.refresh_due_realms()
            except asyncio.CancelledError:
                raise
            except Exception:  # the refresher must outlive any one failure
                log.exception("token_refresher_failed")
            await self._clock.sleep(interval)
