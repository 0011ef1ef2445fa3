"""WAIT after a write counts that write's replicas on every topology.

On a cluster the WAIT must reach the node that owns the key, on the connection that made
the write; a replica that is stopped must make it time out with 0 acknowledgements.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.replica_ack import eval_then_wait
from tests.redis_server import RedisServer
from tests.redis_topologies import REDIS_TARGETS, RedisClusterSet, SentinelSet, redis_target

SET = "return redis.call('SET', KEYS[1], ARGV[1])"
REPLICATED = {"redis-sentinel": 1, "redis-cluster": 1, "redis": 0, "redis-tls": 0}


def replica_of(request: pytest.FixtureRequest, kind: str, key: str) -> RedisServer | None:
    if kind == "redis-sentinel":
        sentinels: SentinelSet = request.getfixturevalue("redis_sentinel")
        master = sentinels.master_of(key)
        return sentinels.replica if master is sentinels.master else sentinels.master
    if kind == "redis-cluster":
        cluster: RedisClusterSet = request.getfixturevalue("redis_cluster")
        return cluster.replica_of(key)
    return None


@contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    server.pause()
    try:
        yield
    finally:
        server.resume()


@pytest.mark.parametrize("kind", REDIS_TARGETS)
async def test_wait_counts_the_replica_that_got_the_write(
    request: pytest.FixtureRequest, kind: str, redis_prefix: str
) -> None:
    client = redis_target(request, kind).client()
    key = RedisKeys(redis_prefix).token("1001")
    try:
        reply, acked = await eval_then_wait(client, SET, key, ["v1"], timeout_ms=200)
        assert reply in (b"OK", "OK", True) and acked == REPLICATED[kind]
        assert await client.get(key) == b"v1"
        replica = replica_of(request, kind, key)
        if replica is not None:
            with stopped(replica):
                _reply, acked = await eval_then_wait(client, SET, key, ["v2"], timeout_ms=150)
            assert acked == 0  # the write's own replica never answered
    finally:
        await client.aclose()
