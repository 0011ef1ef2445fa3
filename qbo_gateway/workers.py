"""Stopping a background worker without cutting a Redis command in half.

Cancelling redis-py in the middle of a command can leave the connection (and with it the
whole shutdown) waiting for a long time. Workers that write to the state backend expose an
"idle" event; `cancel_when_idle` waits (bounded) for the write in hand to finish and then
cancels the worker where cancelling is safe. `DrainWorker` is the one queue-draining loop
that the history writer, the alert store writer and the webhook notifier share.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    """

    def __init__(
        self,
        *,
        has_work: Callable[[], bool],
        step: Callable[[], Awaitable[None]],
        on_error: Callable[[Exception], None],
    ) -> None:
        self._has_work = has_work
        self._step = step
        self._on_error = on_error
        self._wake = asyncio.Event()
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

    async def drained(self) -> None:
        await self.idle.wait()

    async def stop(self, *, park: bool = True) -> None:
        """Stop; with `park`, only after the step in hand is done (see cancel_when_idle)."""
        if park:
            self._wake.set()
            await cancel_when_idle(self._task, self.idle)
        elif self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _loop(self) -> None:
        while True:
            if not self._has_work():
                self.idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed step must not end the worker
                self._on_error(exc)
