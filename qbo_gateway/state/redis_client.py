"""The one way the gateway builds a Redis client: explicit timeouts and retries.

A slow Redis must never hold a request longer than a fraction of a second: timeouts are
short and the client retries once; past that the caller gets `StateUnavailable` and falls
back to in-process state.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)


def make_redis(
    url: str,
    *,
    socket_timeout: float = 0.5,
    connect_timeout: float = 0.5,
    max_connections: int = 64,
) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=5,
        max_connections=max_connections,
        decode_responses=False,
    )
