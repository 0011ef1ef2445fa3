"""The one way the gateway builds a Redis client, for each topology it runs on.

A slow Redis must never hold a request longer than a fraction of a second: timeouts are
short and the client retries once; past that the caller gets `StateUnavailable` and falls
back to in-process state. The same keys and scripts run on a standalone server, on a
Sentinel-managed master (redis-py's Sentinel pool asks the sentinels for the master on
every new connection, so a failover is followed by itself) and on Redis Cluster (redis-py's
cluster client routes by hash slot and reloads the slot map after a node fails). TLS
(`rediss://`, optionally with a CA bundle) and ACL users (user and password in the URL)
work the same in all three.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from qbo_gateway.state.topology import RedisTopology

# Either client speaks the same commands; the cluster one routes each by its key's slot.
RedisClient: TypeAlias = Redis | RedisCluster

# "Cannot be answered right now": the server is down, slow, failing over (a cluster shard
# without a master answers CLUSTERDOWN or TRYAGAIN; a Sentinel without a master raises
# MasterNotFoundError, a ConnectionError), or the client is still learning the slot map.
REDIS_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterError,
    RedisClusterException,
    TryAgainError,
    ConnectionError,
    OSError,
)


class _Cluster(RedisCluster):
    """redis-py's cluster client, initialised before routing a command.

    redis-py 8 works out a command's route before it (re)loads the slot map, so commands
    started together on a fresh client, or after it reset itself on CLUSTERDOWN, can go out
    on connections the reload just closed. Loading the map first (one at a time, under the
    client's own lock) closes most of that race; what is left (a node's connections closed
    after a failure while another command is writing on one) surfaces as an
    AttributeError on the closed writer, which is what it is: a lost connection.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            await self.initialize()
        try:
            return await super().execute_command(*args, **kwargs)
        except AttributeError as exc:
            if "NoneType" not in str(exc):
                raise
            self._initialize = True
            raise RedisConnectionError("connection closed under the command") from exc


def _common(socket_timeout: float, connect_timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 5,
        "decode_responses": False,
    }


def _tls(topology: RedisTopology) -> dict[str, Any]:
    if not topology.tls:
        return {}
    return {"ssl_ca_certs": topology.ca_file} if topology.ca_file else {}


def make_redis(
    url: str,
    *,
    socket_timeout: float = 0.5,
    connect_timeout: float = 0.5,
    max_connections: int = 64,
    pool_timeout: float = 1.0,
    ca_file: str | None = None,
) -> Redis:
    """A client for one standalone server."""
    tls = _tls(RedisTopology(url=url, ca_file=ca_file))
    # A blocking pool: under a burst, a caller waits briefly for a free connection instead
    # of failing with "Too many connections" (which would look like Redis being down and
    # send every replica to its local fallback).
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        **_common(socket_timeout, connect_timeout),
        **tls,
    )
    return Redis(connection_pool=pool)


def _sentinel_client(
    topology: RedisTopology, socket_timeout: float, connect_timeout: float
) -> Redis:
    parts = urlsplit(topology.url or "redis://")
    auth: dict[str, Any] = {}
    if parts.username:
        auth["username"] = unquote(parts.username)
    if parts.password:
        auth["password"] = unquote(parts.password)
    db = parts.path.strip("/")
    tls: dict[str, Any] = {"ssl": True, **_tls(topology)} if topology.tls else {}
    common = _common(socket_timeout, connect_timeout)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        list(topology.sentinels),
        sentinel_kwargs={
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            **tls,
        },
        **common,
        **tls,
    )
    client: Redis = sentinel.master_for(
        topology.sentinel_master, db=int(db) if db.isdigit() else 0, **auth, **common, **tls
    )
    return client


def connect_redis(
    topology: RedisTopology,
    *,
    socket_timeout: float = 0.5,
    connect_timeout: float = 0.5,
    max_connections: int = 64,
) -> RedisClient:
    """The client for the configured topology (no I/O until its first command)."""
    if topology.mode == "sentinel":
        return _sentinel_client(topology, socket_timeout, connect_timeout)
    if not topology.url:
        raise ValueError("QBO_REDIS_URL is required in standalone and cluster mode")
    if topology.mode == "cluster":
        # One retry, as for a single server: a failed shard is an outage for the fallback
        # to cover, not something to wait out inside one request.
        return _Cluster.from_url(
            topology.url,
            max_connections=max_connections,
            **_common(socket_timeout, connect_timeout),
            **_tls(topology),
        )
    return make_redis(
        topology.url,
        socket_timeout=socket_timeout,
        connect_timeout=connect_timeout,
        max_connections=max_connections,
        ca_file=topology.ca_file,
    )


async def ping(client: RedisClient) -> None:
    """Reachable means every primary answers: on a cluster one dead shard is an outage.

    A failure also makes the cluster client reload its slot map on the next command, so the
    availability probe that calls this finds a promoted replica by itself.
    """
    if isinstance(client, RedisCluster):
        await client.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        await client.ping()
