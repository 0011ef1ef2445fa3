"""One behaviour suite for every TokenStore (SQLite, Redis) and every Locks implementation."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from qbo_gateway.clock import ManualClock
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.locks import Locks, MemoryLocks, RedisLocks
from qbo_gateway.state.redis_client import make_redis
from qbo_gateway.tokens.crypto import TokenCipher, TokenDecryptError, generate_key
from qbo_gateway.tokens.records import TokenRecord, TokenStore
from qbo_gateway.tokens.store_redis import RedisTokenStore
from qbo_gateway.tokens.store_sqlite import SqliteTokenStore
from tests.redis_server import RedisServer
from tests.redis_topologies import REDIS_TARGETS, redis_target

KEY = generate_key()
ACCESS = "ACCESS-SECRET-abcdef0123456789"
REFRESH = "REFRESH-SECRET-abcdef0123456789"


def record(realm: str = "1001", n: int = 0) -> TokenRecord:
    return TokenRecord(
        realm_id=realm,
        access_token=f"{ACCESS}-{n}",
        refresh_token=f"{REFRESH}-{n}",
        access_expires_at=1_800_003_600.0,
        refresh_expires_at=1_808_000_000.0,
        refresh_hard_expires_at=1_950_000_000.0,
        updated_at=1_800_000_000.0,
    )


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = make_redis(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(params=["sqlite", *REDIS_TARGETS])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str
) -> AsyncIterator[TokenStore]:
    cipher = TokenCipher(KEY)
    if request.param == "sqlite":
        sqlite_store = SqliteTokenStore.in_dir(tmp_path, cipher)
        yield sqlite_store
        await sqlite_store.close()
    else:
        client = redis_target(request, request.param).client()
        yield RedisTokenStore(client, RedisKeys(redis_prefix), cipher)
        await client.aclose()


async def test_put_if_absent_then_get(store: TokenStore) -> None:
    assert await store.get("1001") is None
    stored = await store.put(record(), expected_version=None)
    assert stored is not None and stored.version == 1
    got = await store.get("1001")
    assert got == stored
    assert got.access_token == f"{ACCESS}-0" and got.refresh_hard_expires_at == 1_950_000_000.0
    # "Only if absent" refuses a second record.
    assert await store.put(record(n=1), expected_version=None) is None
    assert (await store.get("1001")) == stored


async def test_compare_and_set_on_version(store: TokenStore) -> None:
    v1 = await store.put(record(), expected_version=None)
    assert v1 is not None
    v2 = await store.put(record(n=1), expected_version=1)
    assert v2 is not None and v2.version == 2
    # An older writer (still holding version 1) can never overwrite the newer pair.
    assert await store.put(record(n=9), expected_version=1) is None
    got = await store.get("1001")
    assert got is not None and got.refresh_token == f"{REFRESH}-1" and got.version == 2


async def test_force_overwrites_and_bumps_version(store: TokenStore) -> None:
    await store.put(record(), expected_version=None)
    await store.put(record(n=1), expected_version=1)
    forced = await store.put(
        record(n=5).with_changes(needs_reconnect=False), expected_version=None, force=True
    )
    assert forced is not None and forced.version == 3
    assert await store.put(record(n=6), expected_version=2) is None
    # force on an absent realm creates it at version 1
    fresh = await store.put(record("2002"), expected_version=7, force=True)
    assert fresh is not None and fresh.version == 1


async def test_concurrent_cas_only_one_wins(store: TokenStore) -> None:
    await store.put(record(), expected_version=None)
    results = await asyncio.gather(*(store.put(record(n=i), expected_version=1) for i in range(10)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and winners[0].version == 2
    assert await store.get("1001") == winners[0]


async def test_delete_and_list(store: TokenStore) -> None:
    for realm in ("3003", "1001", "2002"):
        await store.put(record(realm), expected_version=None)
    assert [r.realm_id for r in await store.list_records()] == ["1001", "2002", "3003"]
    assert await store.delete("2002") is True
    assert await store.delete("2002") is False
    assert [r.realm_id for r in await store.list_records()] == ["1001", "3003"]
    assert await store.get("2002") is None


async def test_restore_keeps_the_version_and_never_goes_back(store: TokenStore) -> None:
    newer = record(n=7).with_changes(version=7, updated_at=1_800_000_700.0)
    assert await store.restore(newer) == newer  # into an empty store, at its own version
    assert await store.get("1001") == newer
    older = record(n=6).with_changes(version=6)
    assert await store.restore(older) == newer  # an older pair never overwrites
    same_later = newer.with_changes(refresh_token="later", updated_at=1_800_000_800.0)
    assert await store.restore(same_later) == same_later  # same version: later issue wins
    assert await store.restore(newer) == same_later
    following = await store.put(record(n=8), expected_version=7)
    assert following is not None and following.version == 8  # versions go on from there


async def test_needs_reconnect_round_trips(store: TokenStore) -> None:
    v1 = await store.put(record(), expected_version=None)
    assert v1 is not None
    v2 = await store.put(v1.with_changes(needs_reconnect=True), expected_version=1)
    got = await store.get("1001")
    assert got is not None and got.needs_reconnect and got == v2


async def test_durability_reports(store: TokenStore, request: pytest.FixtureRequest) -> None:
    durable, why = await store.durability()
    if request.node.callspec.params["store"] == "redis-tls":
        # Its ACL user may not run CONFIG (as on managed Redis): INFO says AOF is off.
        assert durable is False and "cannot confirm Redis persistence" in why
    elif request.node.callspec.params["store"] == "redis-sentinel":
        # No persistence, but a replica: each token write waits for it to acknowledge.
        assert durable is True and "WAIT" in why and "keeps nothing on disk" in why
    elif isinstance(store, RedisTokenStore):
        # The test servers run with --save "" --appendonly no: nothing on disk.
        assert durable is False and "NOTHING ON DISK" in why
    else:
        assert durable is True and "synchronous=FULL" in why


# --- encryption at rest and realm binding ---------------------------------------------


async def test_sqlite_lists_every_realm_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("qbo_gateway.tokens.store_sqlite._PAGE", 3)
    store = SqliteTokenStore.in_dir(tmp_path, TokenCipher(KEY))
    realms = [str(1001 + n) for n in range(8)]
    for realm in reversed(realms):
        await store.put(record(realm), expected_version=None)
    assert [r.realm_id for r in await store.list_records()] == realms
    await store.close()


async def test_sqlite_file_and_wal_hold_no_plain_token(tmp_path: Path) -> None:
    store = SqliteTokenStore.in_dir(tmp_path, TokenCipher(KEY))
    stored = await store.put(record(), expected_version=None)
    assert stored is not None
    await store.put(record(n=1), expected_version=1)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("tokens.sqlite3")]
    assert any(p.name.endswith("-wal") for p in files)
    for path in files:
        data = path.read_bytes()
        assert ACCESS.encode() not in data and REFRESH.encode() not in data
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    mode = store._conn().execute("PRAGMA synchronous").fetchone()[0]
    assert mode == 2  # FULL
    await store.close()


async def test_sqlite_record_copied_to_other_realm_fails(tmp_path: Path) -> None:
    store = SqliteTokenStore.in_dir(tmp_path, TokenCipher(KEY))
    await store.put(record("1001"), expected_version=None)
    await store.close()
    db = sqlite3.connect(tmp_path / "tokens.sqlite3")
    db.execute(
        "INSERT INTO tokens (realm_id, version, record) "
        "SELECT '2002', version, record FROM tokens WHERE realm_id = '1001'"
    )
    db.commit()
    db.close()
    store = SqliteTokenStore.in_dir(tmp_path, TokenCipher(KEY))
    with pytest.raises(TokenDecryptError):
        await store.get("2002")
    assert [r.realm_id for r in await store.list_records()] == ["1001"]
    await store.close()


async def test_sqlite_wrong_key_fails_and_rotated_keys_read(tmp_path: Path) -> None:
    store = SqliteTokenStore.in_dir(tmp_path, TokenCipher(KEY))
    await store.put(record(), expected_version=None)
    await store.close()
    other = SqliteTokenStore.in_dir(tmp_path, TokenCipher(generate_key()))
    with pytest.raises(TokenDecryptError):
        await other.get("1001")
    await other.close()
    rotated = SqliteTokenStore.in_dir(tmp_path, TokenCipher(f"{generate_key()},{KEY}"))
    got = await rotated.get("1001")
    assert got is not None and got.access_token == f"{ACCESS}-0"
    await rotated.close()


async def test_redis_values_hold_no_plain_token_and_realm_bound(
    redis_client: Redis, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    store = RedisTokenStore(redis_client, keys, TokenCipher(KEY))
    await store.put(record("1001"), expected_version=None)
    dumped = b""
    async for key in redis_client.scan_iter(match=f"{redis_prefix}*"):
        dumped += key + (await redis_client.dump(key) or b"")
    assert dumped and ACCESS.encode() not in dumped and REFRESH.encode() not in dumped
    raw = await redis_client.hgetall(keys.token("1001"))
    await redis_client.hset(keys.token("2002"), mapping=raw)
    await redis_client.sadd(keys.token_index(), "2002")
    with pytest.raises(TokenDecryptError):
        await store.get("2002")
    assert [r.realm_id for r in await store.list_records()] == ["1001"]


async def test_redis_down_raises_state_unavailable(redis_prefix: str) -> None:
    server = RedisServer()
    server.start()
    client = make_redis(server.url)
    store = RedisTokenStore(client, RedisKeys(redis_prefix), TokenCipher(KEY))
    locks = RedisLocks(client, RedisKeys(redis_prefix))
    try:
        await store.put(record(), expected_version=None)
        server.stop()
        with pytest.raises(StateUnavailable):
            await store.get("1001")
        with pytest.raises(StateUnavailable):
            await store.put(record(n=1), expected_version=1)
        with pytest.raises(StateUnavailable):
            await locks.acquire("token:1001", "me", 5)
    finally:
        await client.aclose()
        server.cleanup()


async def test_redis_durable_when_aof_on(redis_prefix: str) -> None:
    server = RedisServer(persistent=True)
    server.start()
    client = make_redis(server.url)
    try:
        durable, why = await RedisTokenStore(
            client, RedisKeys(redis_prefix), TokenCipher(KEY)
        ).durability()
        assert durable is True and "AOF" in why
    finally:
        await client.aclose()
        server.cleanup()


async def test_redis_rdb_only_is_durable_with_a_caveat(redis_prefix: str) -> None:
    server = RedisServer()
    server.start()
    client = make_redis(server.url)
    try:
        await client.config_set("save", "3600 1")
        durable, why = await RedisTokenStore(
            client, RedisKeys(redis_prefix), TokenCipher(KEY)
        ).durability()
        assert durable is True and "RDB snapshots only" in why
    finally:
        await client.aclose()
        server.cleanup()


# --- locks ------------------------------------------------------------------------------


@pytest.fixture(params=["memory", *REDIS_TARGETS])
async def locks_and_clock(
    request: pytest.FixtureRequest, redis_prefix: str
) -> AsyncIterator[tuple[Locks, ManualClock | None]]:
    if request.param == "memory":
        clock = ManualClock()
        yield MemoryLocks(clock), clock
    else:
        client = redis_target(request, request.param).client()
        yield RedisLocks(client, RedisKeys(redis_prefix)), None
        await client.aclose()


async def test_lock_owner_and_compare_and_delete(
    locks_and_clock: tuple[Locks, ManualClock | None],
) -> None:
    locks, _ = locks_and_clock
    assert await locks.acquire("token:1001", "a", 30) is True
    assert await locks.acquire("token:1001", "b", 30) is False
    assert await locks.acquire("token:2002", "b", 30) is True  # per-realm
    assert await locks.release("token:1001", "b") is False  # not the owner
    assert await locks.acquire("token:1001", "b", 30) is False
    assert await locks.release("token:1001", "a") is True
    assert await locks.acquire("token:1001", "b", 30) is True


async def test_lock_lapses_after_lease(locks_and_clock: tuple[Locks, ManualClock | None]) -> None:
    locks, clock = locks_and_clock
    assert await locks.acquire("token:1001", "a", 0.05) is True
    if clock is not None:
        clock.advance(0.1)
    else:
        await asyncio.sleep(0.1)  # Redis expires keys on its own clock: real time
    assert await locks.acquire("token:1001", "b", 30) is True
    # the lapsed owner cannot free the new holder's lock
    assert await locks.release("token:1001", "a") is False
    assert await locks.acquire("token:1001", "c", 30) is False


async def test_only_the_owner_extends_a_lease(
    locks_and_clock: tuple[Locks, ManualClock | None],
) -> None:
    locks, _ = locks_and_clock
    assert await locks.acquire("token:1001", "a", 30) is True
    assert await locks.extend("token:1001", "b", 30) is False  # not the owner
    assert await locks.extend("token:1001", "a", 60) is True
    assert await locks.release("token:1001", "a") is True
    assert await locks.extend("token:1001", "a", 60) is False  # released: nothing to renew
