"""The meter's home in Redis mode: one hash per month that every replica adds to.

A batch is one pipeline of HINCRBY on a single key (so Redis Cluster serves it from one
slot), plus an EXPIRE that keeps the month readable a while after it ends. The reply to
HINCRBY of `total` is the fleet's count, so each batch also tells this replica where the
fleet stands without another round trip.
"""

from __future__ import annotations

from redis.exceptions import RedisError

from qbo_gateway.economy.records import TOTAL
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import REDIS_DOWN_ERRORS, RedisClient

_ERRORS: tuple[type[BaseException], ...] = (*REDIS_DOWN_ERRORS, RedisError)
_KEEP_SECONDS = 100 * 86400  # a month's counts stay readable into the next quarter


class RedisMeterBackend:
    def __init__(self, redis: RedisClient, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    async def add(self, month: str, fields: dict[str, int]) -> int:
        key = self._keys.coreplus_month(month)
        ordered = [(TOTAL, fields.get(TOTAL, 0))]
        ordered += [(name, n) for name, n in fields.items() if name != TOTAL]
        try:
            pipe = self._redis.pipeline(transaction=False)
            for name, n in ordered:
                pipe.hincrby(key, name, n)
            pipe.expire(key, _KEEP_SECONDS)
            replies = await pipe.execute()
        except _ERRORS as exc:
            raise StateUnavailable(f"redis meter unavailable: {type(exc).__name__}") from exc
        return int(replies[0])

    async def read(self, month: str) -> dict[str, int]:
        try:
            raw = await self._redis.hgetall(self._keys.coreplus_month(month))
        except _ERRORS as exc:
            raise StateUnavailable(f"redis meter unavailable: {type(exc).__name__}") from exc
        return {_text(k): int(v) for k, v in raw.items()}

    async def count(self, month: str, name: str) -> int:
        try:
            raw = await self._redis.hget(self._keys.coreplus_month(month), name)
        except _ERRORS as exc:
            raise StateUnavailable(f"redis meter unavailable: {type(exc).__name__}") from exc
        return int(raw) if raw is not None else 0

    async def close(self) -> None:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
