"""Time, injected.

Every component that reads the time or waits takes a `Clock`, so tests move time forward
instead of sleeping through it. `now()` is wall time (epoch seconds, comparable across
replicas and with Redis `TIME`); `monotonic()` is for measuring durations.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that only moves when told to; `sleep` advances it instead of waiting.

    Sleeping moves the time forward to the sleeper's wake-up time (never backwards, and
    concurrent sleepers do not add up: each only ensures its own wake-up time has come) and
    yields once to the event loop, so code that waits for a rate slot or a backoff
    finishes at once in tests, with the time it would have waited visible on the clock.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._mono = 1000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            wake = self._now + seconds
            await asyncio.sleep(0)
            if wake > self._now:
                self.advance(wake - self._now)
        await asyncio.sleep(0)
