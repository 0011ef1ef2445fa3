"""Named leases with an owner: the cross-replica guard around a token refresh.

A lock is taken only if free or lapsed and released only by its owner (compare-and-delete),
so a replica whose lease lapsed mid-refresh cannot free a lock another replica now holds.
`MemoryLocks` serves embedded mode (one process); `RedisLocks` serves replicas.
"""

from __future__ import annotations

from typing import Protocol

from qbo_gateway.clock import Clock
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import REDIS_DOWN_ERRORS, RedisClient

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class MemoryLocks:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._held: dict[str, tuple[str, float]] = {}

    async def acquire(self, name: str, owner: str, lease_seconds: float) -> bool:
        now = self._clock.monotonic()
        held = self._held.get(name)
        if held is not None and held[1] > now:
            return False
        self._held[name] = (owner, now + lease_seconds)
        return True

    async def extend(self, name: str, owner: str, lease_seconds: float) -> bool:
        held = self._held.get(name)
        now = self._clock.monotonic()
        if held is None or held[0] != owner or held[1] <= now:
            return False
        self._held[name] = (owner, now + lease_seconds)
        return True

    async def release(self, name: str, owner: str) -> bool:
        held = self._held.get(name)
        if held is None or held[0] != owner:
            return False
        del self._held[name]
        return True


class RedisLocks:
    def __init__(self, redis: RedisClient, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._release = redis.register_script(_RELEASE)
        self._extend = redis.register_script(_EXTEND)

    async def acquire(self, name: str, owner: str, lease_seconds: float) -> bool:
        try:
            ok = await self._redis.set(
                self._keys.lock(name), owner, nx=True, px=max(1, int(lease_seconds * 1000))
            )
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable(f"redis unreachable: {type(exc).__name__}") from exc
        return bool(ok)

    async def extend(self, name: str, owner: str, lease_seconds: float) -> bool:
        try:
            done = await self._extend(
                keys=[self._keys.lock(name)], args=[owner, max(1, int(lease_seconds * 1000))]
            )
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable(f"redis unreachable: {type(exc).__name__}") from exc
        return bool(done)

    async def release(self, name: str, owner: str) -> bool:
        try:
            done = await self._release(keys=[self._keys.lock(name)], args=[owner])
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable(f"redis unreachable: {type(exc).__name__}") from exc
        return bool(done)


class Locks(Protocol):
    """Named leases with an owner: acquire if free or lapsed; release only by the owner."""

    async def acquire(self, name: str, owner: str, lease_seconds: float) -> bool: ...

    async def extend(self, name: str, owner: str, lease_seconds: float) -> bool:
        """Renew the owner's lease from now; False when it lapsed or another holds it."""
        ...

    async def release(self, name: str, owner: str) -> bool: ...
