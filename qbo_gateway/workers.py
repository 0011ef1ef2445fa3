"""Stopping a background worker without cutting a Redis command in half.

Cancelling redis-py in the middle of a command can leave the connection (and with it the
whole shutdown) waiting for a long time. Workers that write to the state backend expose an
"idle" event; `park_then_cancel` waits (bounded) for the write in hand to finish and then
cancels the worker where cancelling is safe.
"""

from __future__ import annotations

import asyncio
import contextlib


async def park_then_cancel(
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
