"""A write and its replicas' acknowledgement (`WAIT`), on every topology.

`WAIT` counts the replicas that received the writes made on *the connection it is sent
on*, so it must follow the write on the same connection: one pipeline does that for a
single server or a Sentinel-managed master, and on a cluster the pipeline sends both to
the node that owns the key (a `WAIT` routed by redis-py's default would go to a random
node and count nothing).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import RedisCluster

from qbo_gateway.state.redis_client import RedisClient


async def eval_then_wait(
    client: RedisClient,
    script: str,
    key: str,
    args: list[Any],
    *,
    replicas: int = 1,
    timeout_ms: int = 100,
) -> tuple[Any, int]:
    """Run a one-key Lua `script`, then WAIT for `replicas`: (the script's reply, acked).

    Raises redis-py's errors unchanged; callers translate them as for any command.
    """
    if isinstance(client, RedisCluster):
        await client.initialize()  # the slot map, if this is the client's first command
        node = client.get_node_from_key(key)
        pipe = client.pipeline()
        pipe.eval(script, 1, key, *args)
        pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node)
        reply, acked = await pipe.execute()
    else:
        async with client.pipeline(transaction=False) as plain:
            plain.eval(script, 1, key, *args)
            plain.wait(replicas, timeout_ms)
            reply, acked = await plain.execute()
    return reply, int(acked)
