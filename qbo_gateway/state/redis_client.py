"""The one way the gateway builds a Redis client: explicit timeouts and retries.

A slow Redis must never hold a request longer than a fraction of a second: timeouts are
short and the client retries once; past that the caller gets `StateUnavailable` and falls
back to in-process state.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
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
    pool_timeout: float = 1.0,
) -> Redis:
    # A blocking pool: under a burst, a caller waits briefly for a free connection instead
    # of failing with "Too many connections" (which would look like Redis being down and
    # send every replica to its local fallback).
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=5,
        decode_responses=False,
    )
    return Redis(connection_pool=pool)
