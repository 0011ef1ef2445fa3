"""Is the shared state backend (Redis) reachable right now?

One `BackendAvailability` per process is shared by every Redis-backed component. The
first failure flips it down (logged once, gauge to 0) and starts a background probe that
PINGs until Redis answers, then flips it up (logged once, gauge to 1). While it is down,
components use their in-process fallback without waiting on Redis timeouts each request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from qbo_gateway.logs import failure
from qbo_gateway.metrics import Metrics

log = structlog.get_logger(__name__)


class BackendAvailability:
    def __init__(
        self,
        *,
        ping: Callable[[], Awaitable[object]] | None,
        metrics: Metrics,
        probe_interval: float = 0.5,
    ) -> None:
        self._ping = ping
        self._metrics = metrics
        self._probe_interval = probe_interval
        self._up = True
        # A replica that has never reached Redis has no tokens: it must not be ready.
        self.ever_up = ping is None
        self._probe_task: asyncio.Task[None] | None = None
        self._closed = False
        self._on_up: list[Callable[[], None]] = []
        metrics.state_backend_up.set(1)

    @property
    def up(self) -> bool:
        return self._up

    def on_up(self, listener: Callable[[], None]) -> None:
        """Call `listener` each time the backend comes back (e.g. to reconcile tokens)."""
        self._on_up.append(listener)

    def mark_up(self) -> None:
        self.ever_up = True
        if not self._up:
            self._up = True
            self._metrics.state_backend_up.set(1)
            log.warning("state_backend_up", backend="redis")
            for listener in self._on_up:
                listener()

    def mark_down(self, error: BaseException | None = None) -> None:
        if self._up:
            self._up = False
            self._metrics.state_backend_up.set(0)
            # Logged once per outage, so the traceback is affordable; redis-py messages
            # name host and port, never the password.
            log.error(
                "state_backend_down",
                backend="redis",
                note="serving with in-process state until Redis answers again",
                **(failure(error) if error is not None else {}),
            )
        if self._probe_task is None or self._probe_task.done():
            with contextlib.suppress(RuntimeError):  # no running loop (sync callers)
                self._probe_task = asyncio.get_running_loop().create_task(self._probe())

    async def check(self) -> bool:
        """Ping once now; used at start-up and by the readiness probe."""
        if self._ping is None:
            return True
        try:
            await self._ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            self.mark_down(exc)
            return False
        self.mark_up()
        return True

    async def _probe(self) -> None:
        while not self._closed and not self._up:
            await asyncio.sleep(self._probe_interval)
            if self._ping is None:
                return
            try:
                await self._ping()
            except Exception:  # noqa: BLE001, S112 - still down; keep probing quietly
                continue
            self.mark_up()

    async def close(self) -> None:
        self._closed = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
