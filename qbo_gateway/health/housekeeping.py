"""The housekeeping tick: the frequent chores that do not wait for the next probe cycle.

Every few seconds (`tick_seconds`) it lets throttles end, re-reads token statuses, adopts
alerts other replicas raised and updates the realm gauge (`ProbeCycle.housekeeping`). It
stops through `cancel_when_idle`, so a Redis write in hand finishes first.
"""

from __future__ import annotations

import asyncio

import structlog

from qbo_gateway.clock import Clock
from qbo_gateway.health.probe_cycle import ProbeCycle
from qbo_gateway.logs import failure
from qbo_gateway.workers import cancel_when_idle

log = structlog.get_logger(__name__)


class HousekeepingTick:
    """Runs `cycle.housekeeping()` every `tick_seconds` while started."""

    def __init__(self, *, cycle: ProbeCycle, clock: Clock, tick_seconds: float) -> None:
        self._cycle = cycle
        self._clock = clock
        self._tick_seconds = tick_seconds
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel_when_idle(self._task, self._idle)
        self._task = None

    async def _loop(self) -> None:
        while True:
            self._idle.set()
            await self._clock.sleep(self._tick_seconds)
            self._idle.clear()
            try:
                await self._cycle.housekeeping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - chores retry next tick
                log.warning("health_housekeeping_failed", **failure(exc))
