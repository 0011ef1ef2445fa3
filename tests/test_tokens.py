"""TokenManager against the simulator (strict rotation) over real sockets, SQLite and Redis."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from structlog.testing import capture_logs

from qbo_gateway.clock import ManualClock
from qbo_gateway.commands import connect as connect_cli
from qbo_gateway.commands import tokens as token_cli
from qbo_gateway.faults import ReconnectRequired, UnknownRealm, UpstreamUnavailable
from qbo_gateway.metrics import Metrics
from qbo_gateway.oauth.intuit import OAuthClient
from qbo_gateway.settings import Settings
from qbo_gateway.simulator import SIM_CLIENT_ID, SIM_CLIENT_SECRET, FaultRule, Simulator
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.locks import Locks, MemoryLocks, RedisLocks
from qbo_gateway.state.redis_client import make_redis
from qbo_gateway.tokens.crypto import TokenCipher, generate_key
from qbo_gateway.tokens.manager import TokenExists, TokenManager
from qbo_gateway.tokens.records import TokenRecord, TokenStore
from qbo_gateway.tokens.store_redis import RedisTokenStore
from qbo_gateway.tokens.store_sqlite import SqliteTokenStore
from tests.redis_server import RedisServer, free_port

KEY = generate_key()
REALM = "9130349226472226"


@dataclass
class RecordingObserver:
    events: list[tuple[str, str]] = field(default_factory=list)

    def request_finished(self, realm_id: str, **kwargs: Any) -> None:
        return None

    def stale_served(self, realm_id: str, *, reason: str, age: float) -> None:
        return None

    def breaker_changed(self, realm_id: str, state: Any) -> None:
        return None

    def throttled(self, realm_id: str, *, until: float) -> None:
        return None

    def token_event(self, realm_id: str, event: str, record: TokenRecord | None = None) -> None:
        self.events.append((realm_id, event))


@dataclass
class Env:
    clock: ManualClock
    sim: Simulator
    base_url: str
    session: aiohttp.ClientSession
    tmp_path: Path
    redis_url: str
    prefix: str
    cleanups: list[Callable[[], Any]] = field(default_factory=list)

    def oauth(self) -> OAuthClient:
        return OAuthClient(
            session=self.session,
            client_id=SIM_CLIENT_ID,
            client_secret=SIM_CLIENT_SECRET,
            token_url=f"{self.base_url}/oauth2/v1/tokens/bearer",
            authorize_url=f"{self.base_url}/connect/oauth2",
            revoke_url=f"{self.base_url}/v2/oauth2/tokens/revoke",
            clock=self.clock,
            timeout=5,
        )

    def sqlite_store(self) -> SqliteTokenStore:
        store = SqliteTokenStore.in_dir(self.tmp_path, TokenCipher(KEY))
        self.cleanups.append(store.close)
        return store

    def redis_parts(self) -> tuple[Redis, RedisTokenStore, RedisLocks]:
        client = make_redis(self.redis_url)
        self.cleanups.append(client.aclose)
        keys = RedisKeys(self.prefix)
        return client, RedisTokenStore(client, keys, TokenCipher(KEY)), RedisLocks(client, keys)

    def manager(
        self,
        store: TokenStore,
        locks: Locks,
        *,
        metrics: Metrics | None = None,
        observer: RecordingObserver | None = None,
        availability: BackendAvailability | None = None,
    ) -> TokenManager:
        return TokenManager(
            store=store,
            locks=locks,
            oauth=self.oauth(),
            clock=self.clock,
            metrics=metrics or Metrics(CollectorRegistry()),
            observer=observer or RecordingObserver(),
            margin=900,
            availability=availability,
        )

    def backend(self, kind: str) -> tuple[TokenStore, Locks]:
        if kind == "sqlite":
            return self.sqlite_store(), MemoryLocks(self.clock)
        _, store, locks = self.redis_parts()
        return store, locks


@pytest.fixture
async def env(
    aiohttp_server: Any, tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[Env]:
    clock = ManualClock()
    sim = Simulator(access_ttl=3600, clock=clock.now)
    server = await aiohttp_server(sim.make_app())
    session = aiohttp.ClientSession()
    e = Env(
        clock,
        sim,
        str(server.make_url("")).rstrip("/"),
        session,
        tmp_path,
        redis_server.url,
        redis_prefix,
    )
    yield e
    for cleanup in reversed(e.cleanups):
        await cleanup()
    await session.close()


async def seeded(env: Env, manager: TokenManager) -> TokenRecord:
    pair = env.sim.add_realm(REALM)
    return await manager.import_tokens(
        REALM, pair.refresh_token, pair.access_token, pair.access_expires_at
    )


def refreshes(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "qbo_gateway_token_refreshes_total", {"result": result}
    )
    return value or 0.0


BACKENDS = ["sqlite", "redis"]


@pytest.mark.parametrize("kind", BACKENDS)
async def test_fresh_token_served_without_token_call(env: Env, kind: str) -> None:
    manager = env.manager(*env.backend(kind))
    record = await seeded(env, manager)
    assert await manager.access_token(REALM) == record.access_token
    assert env.sim.token_calls == 0
    with pytest.raises(UnknownRealm):
        await manager.access_token("1234")


@pytest.mark.parametrize("kind", BACKENDS)
async def test_50_concurrent_calls_inside_margin_make_one_token_call(env: Env, kind: str) -> None:
    metrics = Metrics(CollectorRegistry())
    observer = RecordingObserver()
    store, locks = env.backend(kind)
    manager = env.manager(store, locks, metrics=metrics, observer=observer)
    old = await seeded(env, manager)
    env.clock.advance(3600 - 600)  # inside the 900 s margin, still valid
    tokens = await asyncio.gather(*(manager.access_token(REALM) for _ in range(50)))
    assert env.sim.token_calls == 1
    assert len(set(tokens)) == 1 and tokens[0] != old.access_token
    stored = await store.get(REALM)
    assert stored is not None and stored.access_token == tokens[0] and stored.version == 2
    assert stored.refresh_hard_expires_at is not None and stored.refresh_expires_at is not None
    sent = {k.lower(): v for k, v in env.sim.token_requests[-1].headers.items()}
    assert sent["x-include-refresh-token-hard-expires-in"] == "true"
    status = await manager.status(REALM)
    assert status is not None and status.refresh_hard_expires_at == stored.refresh_hard_expires_at
    assert status.last_refresh_at == env.clock.now()
    assert refreshes(metrics, "success") == 1
    assert (REALM, "refreshed") in observer.events


async def test_three_replicas_150_calls_make_one_token_call(env: Env) -> None:
    managers = []
    for _ in range(3):
        _, store, locks = env.redis_parts()  # a separate Redis client per replica
        managers.append(env.manager(store, locks))
    old = await seeded(env, managers[0])
    env.clock.advance(3600 - 600)
    env.sim.token_latency = 0.05  # the refresh is in flight while the others arrive
    tokens = await asyncio.gather(*(managers[i % 3].access_token(REALM) for i in range(150)))
    assert env.sim.token_calls == 1
    assert len(set(tokens)) == 1 and tokens[0] != old.access_token


async def test_restart_with_stale_bootstrap_uses_rotated_token(env: Env) -> None:
    pair = env.sim.add_realm(REALM)
    first = env.manager(env.sqlite_store(), MemoryLocks(env.clock))
    assert await first.bootstrap(
        REALM, pair.access_token, pair.refresh_token, pair.access_expires_at
    )
    env.clock.advance(3000)
    rotated = await first.access_token(REALM)
    assert env.sim.token_calls == 1 and rotated != pair.access_token
    # "restart": a new store and manager on the same state dir, same (stale) environment
    second = env.manager(env.sqlite_store(), MemoryLocks(env.clock))
    assert not await second.bootstrap(
        REALM, pair.access_token, pair.refresh_token, pair.access_expires_at
    )
    assert await second.access_token(REALM) == rotated
    env.clock.advance(3000)  # the next refresh works: the rotated refresh token was kept
    newer = await second.access_token(REALM)
    assert newer not in (rotated, pair.access_token) and env.sim.token_calls == 2


@pytest.mark.parametrize("kind", BACKENDS)
async def test_cancelled_caller_still_ends_with_new_pair_stored(env: Env, kind: str) -> None:
    store, locks = env.backend(kind)
    manager = env.manager(store, locks)
    old = await seeded(env, manager)
    env.clock.advance(3600 - 600)
    env.sim.inject(FaultRule(target="token", kind="delay", delay=0.3, times=1))
    caller = asyncio.create_task(manager.access_token(REALM))
    for _ in range(200):
        if env.sim.token_calls == 1:
            break
        await asyncio.sleep(0.005)
    assert env.sim.token_calls == 1
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(manager.drain(), 5)
    stored = await store.get(REALM)
    assert stored is not None and stored.version == old.version + 1
    assert stored.access_token != old.access_token
    assert await manager.access_token(REALM) == stored.access_token
    assert env.sim.token_calls == 1


@pytest.mark.parametrize("kind", BACKENDS)
async def test_invalid_grant_requires_reconnect_until_new_tokens(env: Env, kind: str) -> None:
    metrics = Metrics(CollectorRegistry())
    observer = RecordingObserver()
    store, locks = env.backend(kind)
    manager = env.manager(store, locks, metrics=metrics, observer=observer)
    await seeded(env, manager)
    env.sim.revoke_realm(REALM)  # the refresh token is dead at Intuit
    env.clock.advance(3600 - 600)
    with pytest.raises(ReconnectRequired):
        await manager.access_token(REALM)
    assert env.sim.token_calls == 1
    for _ in range(20):
        with pytest.raises(ReconnectRequired):
            await manager.access_token(REALM)
    assert await manager.refresh_due_realms() == 0
    assert env.sim.token_calls == 1
    assert (REALM, "reconnect_required") in observer.events
    assert refreshes(metrics, "invalid_grant") == 1
    status = await manager.status(REALM)
    assert status is not None and status.needs_reconnect
    stored = await store.get(REALM)
    assert stored is not None and stored.needs_reconnect  # every replica sees it
    with pytest.raises(ReconnectRequired):
        await manager.after_unauthorized(REALM, "whatever")
    # New tokens arrive; the admin refresh lifts reconnect-required.
    pair = env.sim.issue_tokens(REALM)
    await manager.import_tokens(REALM, pair.refresh_token, force=True)
    assert (REALM, "reconnected") in observer.events
    status = await manager.force_refresh(REALM)
    assert not status.needs_reconnect and status.version >= 3
    assert env.sim.token_calls == 2
    assert await manager.access_token(REALM) == (await store.get(REALM)).access_token  # type: ignore[union-attr]


async def test_admin_refresh_on_dead_realm_keeps_it_reconnect_required(env: Env) -> None:
    manager = env.manager(*env.backend("sqlite"))
    await seeded(env, manager)
    env.sim.revoke_realm(REALM)
    with pytest.raises(ReconnectRequired):
        await manager.force_refresh(REALM)
    with pytest.raises(ReconnectRequired):
        await manager.access_token(REALM)


@pytest.mark.parametrize("kind", ["server_error", "disconnect"])
async def test_transient_failures_retry_then_succeed(env: Env, kind: str) -> None:
    metrics = Metrics(CollectorRegistry())
    manager = env.manager(*env.backend("sqlite"), metrics=metrics)
    old = await seeded(env, manager)
    env.clock.advance(3600 - 600)
    env.sim.inject(FaultRule(target="token", kind=kind, times=2))
    before = env.clock.now()
    token = await manager.access_token(REALM)
    assert env.sim.token_calls == 3 and token != old.access_token
    assert env.clock.now() - before >= 0.5 * 0.5 + 1.0 * 0.5  # backoff slept on the clock
    assert refreshes(metrics, "success") == 1 and refreshes(metrics, "failure") == 0


async def test_failing_token_endpoint_keeps_current_token_until_expiry(env: Env) -> None:
    metrics = Metrics(CollectorRegistry())
    observer = RecordingObserver()
    store, locks = env.backend("sqlite")
    manager = env.manager(store, locks, metrics=metrics, observer=observer)
    old = await seeded(env, manager)
    env.clock.advance(3600 - 600)
    env.sim.inject(FaultRule(target="token", kind="server_error"))
    assert await manager.access_token(REALM) == old.access_token
    assert env.sim.token_calls == 3
    assert refreshes(metrics, "failure") == 1
    status = await manager.status(REALM)
    assert status is not None and status.refresh_failing and status.last_refresh_error
    assert (REALM, "refresh_failed") in observer.events
    env.clock.advance(10)  # within the cool-down: requests do not retry the token call
    for _ in range(5):
        assert await manager.access_token(REALM) == old.access_token
    assert env.sim.token_calls == 3
    env.clock.advance(490)
    assert await manager.access_token(REALM) == old.access_token
    assert env.sim.token_calls == 6
    env.clock.advance(200)  # now expired
    with pytest.raises(UpstreamUnavailable):
        await manager.access_token(REALM)
    stored = await store.get(REALM)
    assert stored is not None and stored.refresh_token == old.refresh_token  # never cleared
    assert not stored.needs_reconnect
    env.sim.clear_faults()
    assert await manager.access_token(REALM) != old.access_token


async def test_invalid_client_is_a_configuration_error(env: Env) -> None:
    metrics = Metrics(CollectorRegistry())
    observer = RecordingObserver()
    manager = env.manager(*env.backend("sqlite"), metrics=metrics, observer=observer)
    old = await seeded(env, manager)
    env.clock.advance(3600 - 600)
    env.sim.inject(FaultRule(target="token", kind="invalid_client"))
    with capture_logs() as logs:
        assert await manager.access_token(REALM) == old.access_token
    assert env.sim.token_calls == 1  # not retried
    assert refreshes(metrics, "invalid_client") == 1
    assert manager.config_error and "invalid_client" in manager.config_error
    assert any(e["event"] == "token_refresh_invalid_client" for e in logs)
    status = await manager.status(REALM)
    assert status is not None and not status.needs_reconnect and not status.refresh_failing
    assert not any(event == "reconnect_required" for _, event in observer.events)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_after_unauthorized_refreshes_once_unless_token_changed(env: Env, kind: str) -> None:
    manager = env.manager(*env.backend(kind))
    old = await seeded(env, manager)
    fresh = await asyncio.gather(
        *(manager.after_unauthorized(REALM, old.access_token) for _ in range(10))
    )
    assert env.sim.token_calls == 1
    assert len(set(fresh)) == 1 and fresh[0] not in (None, old.access_token)
    # a caller still holding the old token gets the new one without another refresh
    assert await manager.after_unauthorized(REALM, old.access_token) == fresh[0]
    assert env.sim.token_calls == 1


async def test_redis_down_serves_memory_and_never_refreshes(env: Env) -> None:
    server = RedisServer()
    server.start()
    try:
        client = make_redis(server.url)
        env.cleanups.append(client.aclose)
        metrics = Metrics(CollectorRegistry())
        availability = BackendAvailability(ping=client.ping, metrics=metrics, probe_interval=60)
        env.cleanups.append(availability.close)
        keys = RedisKeys(env.prefix)
        store = RedisTokenStore(client, keys, TokenCipher(KEY))
        manager = env.manager(
            store, RedisLocks(client, keys), metrics=metrics, availability=availability
        )
        old = await seeded(env, manager)
        assert await manager.access_token(REALM) == old.access_token
        server.stop()
        env.clock.advance(3600 - 600)  # inside the margin: would refresh if it could
        assert await manager.access_token(REALM) == old.access_token
        assert not availability.up
        assert await manager.access_token(REALM) == old.access_token
        assert await manager.refresh_due_realms() == 0
        assert env.sim.token_calls == 0
        assert refreshes(metrics, "skipped") >= 1
        assert [s.realm_id for s in await manager.statuses()] == [REALM]
        with pytest.raises(UpstreamUnavailable):
            await manager.force_refresh(REALM)
        env.clock.advance(700)  # expired: nothing valid to serve
        with pytest.raises(UpstreamUnavailable):
            await manager.access_token(REALM)
        assert env.sim.token_calls == 0
    finally:
        server.cleanup()


async def test_background_refresher_keeps_realms_fresh(env: Env) -> None:
    manager = env.manager(*env.backend("sqlite"))
    await seeded(env, manager)
    assert await manager.refresh_due_realms() == 0
    env.clock.advance(3600 - 600)
    assert await manager.refresh_due_realms() == 1
    assert env.sim.token_calls == 1
    # With traffic-free hours the access token keeps getting refreshed; the refresh
    # token is therefore used at least daily.
    for _ in range(30):
        env.clock.advance(1800)
        await manager.refresh_due_realms()
    # An access token lives an hour and is due 15 minutes before it ends: on a half-hour
    # tick every other tick refreshes, so 30 ticks make 15 refreshes after the first.
    assert env.sim.token_calls == 1 + 15
    status = await manager.status(REALM)
    assert status is not None and status.access_expires_at > env.clock.now() + 900


async def test_daily_refresh_even_with_long_lived_access_token(env: Env) -> None:
    manager = env.manager(*env.backend("sqlite"))
    pair = env.sim.add_realm(REALM)
    # an imported access token claimed valid for two days: the refresh token still ages
    await manager.import_tokens(
        REALM, pair.refresh_token, pair.access_token, env.clock.now() + 2 * 86400
    )
    env.clock.advance(22 * 3600)
    assert await manager.refresh_due_realms() == 0
    env.clock.advance(3600 + 1)
    assert await manager.refresh_due_realms() == 1


async def test_run_refresher_cancel_never_cuts_a_refresh(env: Env) -> None:
    store, locks = env.backend("sqlite")
    manager = env.manager(store, locks)
    old = await seeded(env, manager)
    env.clock.advance(3600 - 600)
    env.sim.inject(FaultRule(target="token", kind="delay", delay=0.2, times=1))
    loop_task = asyncio.create_task(manager.run_refresher(60))
    for _ in range(200):
        if env.sim.token_calls == 1:
            break
        await asyncio.sleep(0.005)
    loop_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop_task
    await asyncio.wait_for(manager.drain(), 5)
    stored = await store.get(REALM)
    assert stored is not None and stored.version == old.version + 1


async def test_import_refuses_overwrite_without_force(env: Env) -> None:
    manager = env.manager(*env.backend("sqlite"))
    await seeded(env, manager)
    with pytest.raises(TokenExists):
        await manager.import_tokens(REALM, "another")
    assert await manager.realm_ids() == [REALM]
    record = await manager.import_tokens(REALM, "another", force=True)
    assert record.version == 2 and record.access_expires_at == 0


async def test_revoke_revokes_at_intuit_and_removes(env: Env) -> None:
    observer = RecordingObserver()
    store, locks = env.backend("sqlite")
    manager = env.manager(store, locks, observer=observer)
    old = await seeded(env, manager)
    assert await manager.revoke(REALM)
    assert await store.get(REALM) is None
    assert (REALM, "removed") in observer.events
    # the grant is dead at the simulator: the old refresh token no longer works
    await manager.import_tokens(REALM, old.refresh_token)
    with pytest.raises(ReconnectRequired):
        await manager.force_refresh(REALM)


async def test_no_token_in_any_log_line(env: Env) -> None:
    store, locks = env.backend("sqlite")
    manager = env.manager(store, locks)
    seen: set[str] = set()
    with capture_logs() as logs:
        old = await seeded(env, manager)
        seen |= {old.access_token, old.refresh_token}
        env.clock.advance(3000)
        env.sim.inject(FaultRule(target="token", kind="server_error", times=1))
        await manager.access_token(REALM)
        now = await store.get(REALM)
        assert now is not None
        seen |= {now.access_token, now.refresh_token}
        env.sim.revoke_realm(REALM)
        env.clock.advance(3000)
        with pytest.raises(ReconnectRequired):
            await manager.access_token(REALM)
    assert logs
    text = repr(logs)
    for secret in seen:
        assert secret not in text
    assert SIM_CLIENT_SECRET not in text


# --- the token subcommands (token_cli) over the same store --------------------------------


def cli_settings(env: Env, **extra: Any) -> Settings:
    return Settings(
        state_dir=env.tmp_path,
        token_keys=KEY,
        client_id=SIM_CLIENT_ID,
        client_secret=SIM_CLIENT_SECRET,
        token_url=f"{env.base_url}/oauth2/v1/tokens/bearer",
        authorize_url=f"{env.base_url}/connect/oauth2",
        revoke_url=f"{env.base_url}/v2/oauth2/tokens/revoke",
        api_base_url=env.base_url,
        **extra,
    )


async def test_cli_import_list_revoke(env: Env) -> None:
    settings = cli_settings(env)
    pair = env.sim.add_realm(REALM)
    out, err = io.StringIO(), io.StringIO()
    args = {"realm_id": REALM, "refresh_token": pair.refresh_token, "out": out, "err": err}
    expiry = str(pair.access_expires_at)
    assert (
        await token_cli.tokens_import(
            settings, access_token=pair.access_token, access_expires_at=expiry, **args
        )
        == 0
    )
    assert await token_cli.tokens_import(settings, **args) == 1
    assert "--force" in err.getvalue()
    assert await token_cli.tokens_import(settings, force=True, **args) == 0
    listed = io.StringIO()
    assert await token_cli.tokens_list(settings, out=listed, clock=env.clock) == 0
    text = listed.getvalue()
    assert REALM in text and "access_expired" in text and "STATUS" in text
    as_json = io.StringIO()
    assert await token_cli.tokens_list(settings, as_json=True, out=as_json, clock=env.clock) == 0
    rows = json.loads(as_json.getvalue())
    assert rows[0]["realm_id"] == REALM and rows[0]["version"] == 2
    for secret in (pair.access_token, pair.refresh_token):
        assert secret not in text + as_json.getvalue() + out.getvalue() + err.getvalue()
    assert await token_cli.tokens_revoke(settings, realm_id=REALM, out=out, err=err) == 0
    assert await token_cli.tokens_revoke(settings, realm_id=REALM, out=out, err=err) == 1
    empty = io.StringIO()
    await token_cli.tokens_list(settings, out=empty)
    assert REALM not in empty.getvalue()
    # revoked at the simulator: the refresh token is dead
    manager = env.manager(*env.backend("sqlite"))
    await manager.import_tokens(REALM, pair.refresh_token)
    with pytest.raises(ReconnectRequired):
        await manager.force_refresh(REALM)


async def test_cli_import_refuses_bad_input(env: Env) -> None:
    err = io.StringIO()
    code = await token_cli.tokens_import(
        cli_settings(env), realm_id="12ab", refresh_token="x", err=err, out=io.StringIO()
    )
    assert code == 2 and "digits" in err.getvalue()


async def test_cli_connect_runs_the_flow(env: Env) -> None:
    port = free_port()
    settings = cli_settings(env, redirect_uri=f"http://127.0.0.1:{port}/oauth/callback")
    ready = asyncio.Event()
    urls: list[str] = []
    out = io.StringIO()
    task = asyncio.create_task(
        connect_cli.connect(settings, port=port, ready=ready, urls=urls, out=out, wait_seconds=10)
    )
    await asyncio.wait_for(ready.wait(), 5)
    async with env.session.get(urls[0], allow_redirects=False) as resp:
        callback = resp.headers["Location"]
    async with env.session.get(callback) as resp:
        assert resp.status == 200
    assert await asyncio.wait_for(task, 5) == 0
    realm = parse_qs(urlsplit(callback).query)["realmId"][0]
    assert f"connected realm {realm}" in out.getvalue()
    store = env.sqlite_store()
    record = await store.get(realm)
    assert record is not None and record.access_token not in out.getvalue()


async def test_redis_lost_mid_refresh_keeps_the_new_pair_and_stores_it_later(env: Env) -> None:
    server = RedisServer(persistent=True)
    server.start()
    try:
        client = make_redis(server.url)
        env.cleanups.append(client.aclose)
        metrics = Metrics(CollectorRegistry())
        availability = BackendAvailability(ping=client.ping, metrics=metrics, probe_interval=0.05)
        env.cleanups.append(availability.close)
        keys = RedisKeys(env.prefix)
        store = RedisTokenStore(client, keys, TokenCipher(KEY))
        manager = env.manager(
            store, RedisLocks(client, keys), metrics=metrics, availability=availability
        )
        old = await seeded(env, manager)
        env.clock.advance(3600 - 600)
        env.sim.inject(FaultRule(target="token", kind="delay", delay=1.0, times=1))
        caller = asyncio.create_task(manager.access_token(REALM))
        # Bounds on waiting, not timings: a loaded machine only makes these loops longer.
        for _ in range(2000):
            if env.sim.token_calls == 1:
                break
            await asyncio.sleep(0.005)
        server.stop()  # Redis dies while Intuit rotates the pair
        token = await asyncio.wait_for(caller, 10)
        assert token != old.access_token  # the only copy of the new pair is kept and used
        assert env.sim.token_calls == 1
        server.start()
        for _ in range(1000):
            if availability.up:
                break
            await asyncio.sleep(0.01)
        assert availability.up
        assert await manager.access_token(REALM) == token
        stored = await store.get(REALM)
        assert stored is not None and stored.access_token == token and stored.version == 2
        env.clock.advance(3000)  # the stored rotated refresh token works
        assert await manager.access_token(REALM) not in (token, old.access_token)
    finally:
        server.cleanup()


async def test_invalid_grant_after_a_concurrent_import_uses_the_new_tokens(env: Env) -> None:
    observer = RecordingObserver()
    store, locks = env.backend("redis")
    manager = env.manager(store, locks, observer=observer)
    await seeded(env, manager)
    env.sim.revoke_realm(REALM)
    env.clock.advance(3600 - 600)
    env.sim.inject(FaultRule(target="token", kind="delay", delay=0.2, times=1))
    caller = asyncio.create_task(manager.access_token(REALM))
    for _ in range(200):
        if env.sim.token_calls == 1:
            break
        await asyncio.sleep(0.005)
    # While the doomed token call is in flight, an operator imports a new grant.
    pair = env.sim.issue_tokens(REALM)
    other = env.manager(*env.backend("redis"))
    await other.import_tokens(
        REALM, pair.refresh_token, pair.access_token, pair.access_expires_at, force=True
    )
    assert await asyncio.wait_for(caller, 5) == pair.access_token
    stored = await store.get(REALM)
    assert stored is not None and not stored.needs_reconnect
    assert not any(event == "reconnect_required" for _, event in observer.events)
