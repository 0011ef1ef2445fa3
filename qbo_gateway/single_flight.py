"""Concurrent callers of one key share one run of the work, in this process.

Used where doing the work twice at once is wasteful (the read cache: twenty concurrent
misses of one read make one QBO call) or harmful (tokens: two refreshes of one realm can
sever it). The run is a task of its own, shielded from its callers: one caller going away
(a client disconnects) neither cancels the run for the others nor leaves it half done.
Every caller gets the same result or the same exception. The key is dropped when the run
ends, so the next caller starts a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """One task per key at a time; `run` joins it or starts it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: dict[K, asyncio.Task[T]] = {}

    def running(self, key: K) -> asyncio.Task[T] | None:
        """The key's run in flight, if any (to join it, or to wait for it to land)."""
        return self._tasks.get(key)

    def start(self, key: K, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Start `work` as the key's run; the key must have none in flight."""
        if key in self._tasks:
            work.close()
            raise RuntimeError(f"{self._name}: a run for this key is already in flight")
        task = asyncio.get_running_loop().create_task(work, name=f"{self._name}-{key}")
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._landed(key, done))
        return task

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The result of the key's run in flight, or of `work()` started now."""
        task = self._tasks.get(key)
        if task is None:
            task = self.start(key, work())
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait until no run is in flight (runs are never cut off)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _landed(self, key: K, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved here: every caller may have left
