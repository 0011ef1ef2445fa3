"""The shared token store for replicas: one Redis hash per realm.

Same promise as the SQLite store: realm-bound Fernet ciphertexts (no token is ever a plain
Redis value), a version per record and compare-and-set writes (a Lua script), so an older
writer can never overwrite a newer pair. A Redis that keeps nothing on disk would lose every
realm on restart: `durability()` finds out and says so loudly. Redis errors become
`StateUnavailable` so callers fall back to what they hold in memory.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from redis.asyncio import RedisCluster
from redis.exceptions import ResponseError

from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import REDIS_DOWN_ERRORS, RedisClient
from qbo_gateway.tokens.crypto import TokenCipher, TokenDecryptError, open_record, seal_record
from qbo_gateway.tokens.records import TokenRecord, is_newer

log = structlog.get_logger(__name__)

# KEYS[1] the realm's hash; ARGV: expected version ("" = absent), new version, ciphertext.
_CAS = """
local cur = redis.call('HGET', KEYS[1], 'v')
if cur == false then cur = '' end
if cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
return 1
"""

_FORCE_ATTEMPTS = 20
REPLICA_WAIT_MS = 250  # how long a token write waits for one replica's acknowledgement
REPLICA_RECHECK_SECONDS = 5.0


class RedisTokenStore:
    def __init__(self, redis: RedisClient, keys: RedisKeys, cipher: TokenCipher) -> None:
        self._redis = redis
        self._keys = keys
        self._cipher = cipher
        self._cas = redis.register_script(_CAS)
        self._warned = False
        self._replicas: tuple[int, float] | None = None  # (connected replicas, checked at)

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable(f"redis unreachable: {type(exc).__name__}") from exc

    async def get(self, realm_id: str) -> TokenRecord | None:
        raw = await self._call(self._redis.hmget(self._keys.token(realm_id), ["v", "d"]))
        return self._open(realm_id, raw)

    def _open(self, realm_id: str, raw: list[bytes | None]) -> TokenRecord | None:
        version, blob = raw
        if version is None or blob is None:
            return None
        record = open_record(self._cipher, realm_id, blob)
        if record.version != int(version):
            raise TokenDecryptError(f"token record of realm {realm_id} has a mismatched version")
        return record

    async def put(
        self, record: TokenRecord, *, expected_version: int | None, force: bool = False
    ) -> TokenRecord | None:
        key = self._keys.token(record.realm_id)
        # The index spans realms, so on a cluster it lives in another slot than the record
        # and cannot join the script. It is written first: a stored record is then always
        # listed, while an index entry without a record (the write below failed) is skipped
        # by list_records.
        await self._call(self._redis.sadd(self._keys.token_index(), record.realm_id))
        expected = expected_version
        for _ in range(_FORCE_ATTEMPTS):
            if force:
                current = await self._call(self._redis.hget(key, "v"))
                expected = None if current is None else int(current)
            stored = record.with_changes(version=(expected or 0) + 1)
            if await self._swap(stored, expected):
                return stored
            if not force:
                return None
        raise StateUnavailable("token record kept changing during a forced write")

    async def restore(self, record: TokenRecord) -> TokenRecord:
        await self._call(self._redis.sadd(self._keys.token_index(), record.realm_id))
        for _ in range(_FORCE_ATTEMPTS):
            current = await self.get(record.realm_id)
            if current is not None and not is_newer(record, current):
                return current
            if await self._swap(record, None if current is None else current.version):
                return record
        raise StateUnavailable("token record kept changing during a restore")

    async def _swap(self, stored: TokenRecord, expected: int | None) -> bool:
        """Compare-and-set: `stored` (at its own version) if the version is `expected`."""
        key = self._keys.token(stored.realm_id)
        done = await self._call(
            self._cas(
                keys=[key],
                args=[
                    "" if expected is None else str(expected),
                    str(stored.version),
                    seal_record(self._cipher, stored),
                ],
            )
        )
        return bool(done)

    async def replicated(self, realm_id: str) -> bool:
        if isinstance(self._redis, RedisCluster):
            return True  # each shard replicates on its own; WAIT is not sent through here
        replicas = await self._replica_count()
        if replicas == 0:
            return True
        # Replication is one ordered stream: a write after the record's, acknowledged by a
        # replica, means the record reached it too (WAIT counts this connection's writes).
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._keys.token_sync(), realm_id)
        pipe.execute_command("WAIT", 1, REPLICA_WAIT_MS)
        _, acks = await self._call(pipe.execute())
        if int(acks) >= 1:
            return True
        log.warning(
            "token_write_not_replicated",
            realm_id=realm_id,
            replicas=replicas,
            wait_ms=REPLICA_WAIT_MS,
            note="the pair stays in the spill file until a replica has it",
        )
        return False

    async def _replica_count(self) -> int:
        now = time.monotonic()
        if self._replicas is None or now - self._replicas[1] > REPLICA_RECHECK_SECONDS:
            info = await self._call(self._redis.info("replication"))
            self._replicas = (int(info.get("connected_slaves", 0)), now)
        return self._replicas[0]

    async def delete(self, realm_id: str) -> bool:
        # Record first, index last: the reverse order could leave a record nobody lists.
        removed = await self._call(self._redis.delete(self._keys.token(realm_id)))
        await self._call(self._redis.srem(self._keys.token_index(), realm_id))
        return bool(removed)

    async def list_records(self) -> list[TokenRecord]:
        members = await self._call(self._redis.smembers(self._keys.token_index()))
        realms = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
        pipe = self._redis.pipeline(transaction=False)
        for realm_id in realms:
            pipe.hmget(self._keys.token(realm_id), ["v", "d"])
        replies = await self._call(pipe.execute()) if realms else []
        out: list[TokenRecord] = []
        for realm_id, raw in zip(realms, replies, strict=True):
            try:
                record = self._open(realm_id, raw)
            except TokenDecryptError:
                continue  # one unreadable record must not hide the others; get() reports it
            if record is not None:
                out.append(record)
        return out

    async def durability(self) -> tuple[bool, str]:
        durable, why = await self._probe_durability()
        if not durable and not self._warned:
            self._warned = True
            log.error("redis_not_durable", detail=why)
        return durable, why

    async def _probe_durability(self) -> tuple[bool, str]:
        try:
            aof = await self._call(self._redis.config_get("appendonly"))
            save = await self._call(self._redis.config_get("save"))
        except ResponseError:
            # Managed Redis often disables CONFIG; INFO persistence still tells about AOF.
            info = await self._call(self._redis.info("persistence"))
            if int(info.get("aof_enabled", 0)):
                return True, "Redis appends every write to its AOF"
            return (
                False,
                "cannot confirm Redis persistence (CONFIG refused, AOF off): tokens may be "
                "lost when Redis restarts; enable appendonly",
            )
        aof_on = _config_value(aof, "appendonly") == "yes"
        save_rules = _config_value(save, "save")
        if aof_on:
            return True, "Redis appends every write to its AOF (appendonly yes)"
        if not isinstance(self._redis, RedisCluster) and await self._replica_count():
            return (
                True,
                "Redis replicates to a replica and each token write waits for one to "
                "acknowledge it (WAIT)"
                + ("" if save_rules else "; this server itself keeps nothing on disk"),
            )
        if save_rules:
            return (
                True,
                f"Redis takes RDB snapshots only (save {save_rules!r}): a crash may lose "
                "tokens rotated since the last snapshot; enable appendonly",
            )
        return (
            False,
            "REDIS KEEPS NOTHING ON DISK (appendonly no, save ''): a Redis restart loses "
            "every realm's tokens and, with rotation, may sever realms for good",
        )

    async def close(self) -> None:
        return None  # the Redis client belongs to the composition root


def _config_value(reply: dict[Any, Any], name: str) -> str:
    for key, value in reply.items():
        k = key.decode() if isinstance(key, bytes) else str(key)
        if k == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""
