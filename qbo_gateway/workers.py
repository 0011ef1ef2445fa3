"""Stopping a background worker without cutting a Redis command in half.

Cancelling redis-py in the middle of a command can leave the connection (and with it the
whole shutdown) waiting for a long time. Workers that write to the state backend expose an
"idle" event; `cancel_when_idle` waits (bounded) for the write in hand to finish and then
cancels the worker where cancelling is safe. `DrainWorker` is the one queue-draining loop
that the history writer, the alert store writer, the webhook notifier and the meter share.

A worker may be paced (`pace` seconds between steps): what arrives meanwhile joins the
next step, so a busy gateway writes one batch per pace instead of one per few requests.
The pace is waited on the event loop's own time, not the injected clock (a ManualClock's
sleep would move the test's time); `drained()` and `stop()` skip it, so nothing waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable


async def cancel_when_idle(
    task: asyncio.Task[None] | None, idle: asyncio.Event, patience: float = 5.0
) -> None:
    """Wait (bounded) until a worker is idle, then cancel it where cancelling is safe."""
    if task is None or task.done():
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(patience):
            await idle.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class DrainWorker:
    """A background task that works while there is work and sleeps when there is none.

    The owner keeps its own queue; `has_work` says whether anything is left and `step` does
    one piece of it. `wake()` after adding work. `idle` is set whenever the queue is empty,
    so `drained()` waits for everything submitted so far, and `stop()` parks before
    cancelling. A failing step is reported through `on_error` and never ends the loop.
    With `pace`, steps start at least `pace` seconds apart unless someone waits for the
    queue to drain (`drained`, `stop`) or `hurry`s it: then it runs unpaced until the
    queue is empty. With `linger`, work that finds the worker idle waits a pace as well.
    """

    def __init__(
        self,
        *,
        has_work: Callable[[], bool],
        step: Callable[[], Awaitable[None]],
        on_error: Callable[[Exception], None],
        pace: float = 0.0,
        linger: bool = False,
    ) -> None:
        self._has_work = has_work
        self._step = step
        self._on_error = on_error
        self.pace = pace  # may be changed while running: the next wait uses it
        self._linger = linger
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._last_step = -math.inf
        self.idle = asyncio.Event()
        self.idle.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        self.idle.clear()
        self._wake.set()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def hurry(self) -> None:
        """Skip the pace until the queue is empty (its owner has a full batch)."""
        self._hurry.set()
        self.wake()

    async def drained(self) -> None:
        if not self.idle.is_set():
            self._hurry.set()
        await self.idle.wait()

    async def stop(self, *, park: bool = True) -> None:
        """Stop; with `park`, only after the step in hand is done (see cancel_when_idle)."""
        if park:
            self._hurry.set()
            self._wake.set()
            await cancel_when_idle(self._task, self.idle)
        elif self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _loop(self) -> None:
        if self._linger:
            self._last_step = asyncio.get_running_loop().time()
        while True:
            if not self._has_work():
                self.idle.set()
                self._hurry.clear()
                self._wake.clear()
                await self._wake.wait()
                if self._linger:
                    # The first piece of work waits out a pace too: a batch per pace.
                    self._last_step = asyncio.get_running_loop().time()
                continue
            if await self._paced():
                continue  # the pace ended: look at the queue again
            self._last_step = asyncio.get_running_loop().time()
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed step must not end the worker
                self._on_error(exc)

    async def _paced(self) -> bool:
        """Wait out the rest of the pace (True), unless it is over or someone hurries."""
        left = self._last_step + self.pace - asyncio.get_running_loop().time()
        if left <= 0 or self._hurry.is_set():
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left):
                await self._hurry.wait()
        return True
