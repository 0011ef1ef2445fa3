"""The refresh lock's lease: short, renewed while its holder lives, checked before a call.

A refresh lock must outlive the token call it guards, or a second replica could refresh
with the same refresh token; but a lock whose holder died (kill -9, a lost pod) must not
keep the realm from refreshing for long. So the lease is about one token-call timeout, its
holder renews it while the refresh runs, and renews it once more right before each token
call: a call starts only with a lease that outlasts it. A holder cut off from the lock
(Redis unreachable, lease lapsed) makes no further call.
"""

from __future__ import annotations

import asyncio
import contextlib

from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.locks import Locks

LEASE_SLACK = 5.0  # seconds beyond one token call: time to store the answer


def lease_seconds(token_timeout: float) -> float:
    return token_timeout + LEASE_SLACK


class LeaseLost(Exception):
    """The lock is no longer ours (it lapsed): no token call may start."""


class Lease:
    def __init__(self, locks: Locks, name: str, owner: str, seconds: float) -> None:
        self._locks = locks
        self._name = name
        self._owner = owner
        self._seconds = seconds
        self._keeper: asyncio.Task[None] | None = None

    async def confirm(self) -> None:
        """Renew now, before a token call; raises LeaseLost or StateUnavailable."""
        if not await self._locks.extend(self._name, self._owner, self._seconds):
            raise LeaseLost(f"the lock {self._name} lapsed")

    def keep(self) -> None:
        """Renew in the background until `stop`."""
        self._keeper = asyncio.get_running_loop().create_task(self._renew(), name="lease-keeper")

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper

    async def _renew(self) -> None:
        while True:
            # The lease lapses in the lock server's real time, so it is renewed in real
            # time, not on the injected clock.
            await asyncio.sleep(self._seconds / 3)
            with contextlib.suppress(StateUnavailable):
                if not await self._locks.extend(self._name, self._owner, self._seconds):
                    return
