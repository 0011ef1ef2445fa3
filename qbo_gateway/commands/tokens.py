"""The token subcommands of `qbo-gateway`: import, list, revoke, connect.

They work on the same token store the daemon uses (the SQLite file in QBO_STATE_DIR, or
Redis), so an operator can seed, inspect or remove realms with the daemon running or not.
Each returns an exit code; none ever prints a token (list shows expiry times and status).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from qbo_gateway.clock import Clock, SystemClock
from qbo_gateway.metrics import Metrics
from qbo_gateway.oauth.connect import CALLBACK_PATH, ConnectFlow, MemoryOAuthStates, connect_routes
from qbo_gateway.oauth.intuit import InvalidGrant, OAuthClient, OAuthError, TransientTokenError
from qbo_gateway.observe import NullObserver
from qbo_gateway.settings import Settings, parse_expiry
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.locks import MemoryLocks
from qbo_gateway.state.redis_client import connect_redis
from qbo_gateway.tokens.crypto import (
    InvalidKeys,
    TokenCipher,
    load_or_create_key_file,
)
from qbo_gateway.tokens.manager import TokenManager, new_record
from qbo_gateway.tokens.records import TokenRecord, TokenStore
from qbo_gateway.tokens.store_redis import RedisTokenStore
from qbo_gateway.tokens.store_sqlite import SqliteTokenStore

CONNECT_TIMEOUT = 600.0


def _secret(value: Any) -> str:
    if value is None:
        return ""
    return str(value.get_secret_value() if hasattr(value, "get_secret_value") else value)


def cipher_for(settings: Settings) -> TokenCipher:
    keys = _secret(settings.token_keys)
    if keys:
        return TokenCipher(keys)
    if not settings.embedded:
        raise InvalidKeys("QBO_TOKEN_KEYS is required with QBO_REDIS_URL")
    return TokenCipher(load_or_create_key_file(settings.state_dir))


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[TokenStore]:
    """The daemon's token store, opened from settings for one command."""
    cipher = cipher_for(settings)
    topology = settings.redis_topology
    if topology is not None:
        redis = connect_redis(topology, socket_timeout=5, connect_timeout=5)
        try:
            yield RedisTokenStore(redis, RedisKeys(settings.redis_prefix), cipher)
        finally:
            await redis.aclose()
    else:
        store = SqliteTokenStore.in_dir(settings.state_dir, cipher)
        try:
            yield store
        finally:
            await store.close()


def _oauth(settings: Settings, session: aiohttp.ClientSession, clock: Clock) -> OAuthClient:
    return OAuthClient(
        session=session,
        client_id=settings.client_id,
        client_secret=_secret(settings.client_secret),
        token_url=settings.token_endpoint,
        authorize_url=settings.authorize_endpoint,
        revoke_url=settings.revoke_endpoint,
        clock=clock,
        timeout=settings.token_timeout_seconds,
    )


def _read_secret_arg(value: str | None, name: str) -> str | None:
    # "-" reads the value from stdin, keeping it out of the process list and shell history.
    if value == "-":
        line = sys.stdin.readline().strip()
        if not line:
            raise ValueError(f"{name}: nothing on stdin")
        return line
    return value


async def tokens_import(
    settings: Settings,
    *,
    realm_id: str,
    refresh_token: str,
    access_token: str | None = None,
    access_expires_at: str | None = None,
    force: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    clock: Clock | None = None,
) -> int:
    out, err, clock = out or sys.stdout, err or sys.stderr, clock or SystemClock()
    try:
        if not realm_id.isdigit():
            raise ValueError("--realm must be digits only")
        refresh = _read_secret_arg(refresh_token, "--refresh-token") or ""
        access = _read_secret_arg(access_token, "--access-token")
        expires = parse_expiry(access_expires_at)
        if not refresh:
            raise ValueError("--refresh-token is empty")
    except ValueError as exc:
        print(f"qbo-gateway: {exc}", file=err)
        return 2
    record = new_record(realm_id, refresh, access, expires, clock.now())
    try:
        async with open_store(settings) as store:
            stored = await store.put(record, expected_version=None, force=force)
    except (InvalidKeys, StateUnavailable) as exc:
        print(f"qbo-gateway: {exc}", file=err)
        return 1
    if stored is None:
        print(
            f"qbo-gateway: realm {realm_id} already has tokens; use --force to replace them",
            file=err,
        )
        return 1
    print(f"stored tokens for realm {realm_id} (version {stored.version})", file=out)
    return 0


def _iso(value: float | None) -> str:
    if not value:
        return "-"
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def record_state(record: TokenRecord, now: float) -> str:
    if record.needs_reconnect:
        return "needs_reconnect"
    ends = [t for t in (record.refresh_expires_at, record.refresh_hard_expires_at) if t]
    if ends and min(ends) <= now:
        return "refresh_expired"
    if record.access_expires_at <= now:
        return "access_expired"  # refreshed on first use or by the daemon's refresher
    return "ok"


@dataclass(frozen=True)
class ListedRealm:
    realm_id: str
    access_expires_at: str
    refresh_expires_at: str
    refresh_hard_expires_at: str
    status: str
    version: int


def listing(records: list[TokenRecord], now: float) -> list[ListedRealm]:
    return [
        ListedRealm(
            realm_id=r.realm_id,
            access_expires_at=_iso(r.access_expires_at),
            refresh_expires_at=_iso(r.refresh_expires_at),
            refresh_hard_expires_at=_iso(r.refresh_hard_expires_at),
            status=record_state(r, now),
            version=r.version,
        )
        for r in records
    ]


async def tokens_list(
    settings: Settings,
    *,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    clock: Clock | None = None,
) -> int:
    out, err, clock = out or sys.stdout, err or sys.stderr, clock or SystemClock()
    try:
        async with open_store(settings) as store:
            records = await store.list_records()
    except (InvalidKeys, StateUnavailable) as exc:
        print(f"qbo-gateway: {exc}", file=err)
        return 1
    rows = listing(records, clock.now())
    if as_json:
        plain = [{k: (None if v == "-" else v) for k, v in row.__dict__.items()} for row in rows]
        print(json.dumps(plain, indent=2), file=out)
        return 0
    header = ("REALM", "ACCESS EXPIRES", "REFRESH EXPIRES", "HARD EXPIRY", "STATUS")
    table = [header] + [
        (
            r.realm_id,
            r.access_expires_at,
            r.refresh_expires_at,
            r.refresh_hard_expires_at,
            r.status,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )
    if not rows:
        print("(no realms stored)", file=out)
    return 0


async def tokens_revoke(
    settings: Settings,
    *,
    realm_id: str,
    out: TextIO | None = None,
    err: TextIO | None = None,
    session: aiohttp.ClientSession | None = None,
    clock: Clock | None = None,
) -> int:
    out, err, clock = out or sys.stdout, err or sys.stderr, clock or SystemClock()
    own_session = session is None
    http = session or aiohttp.ClientSession()
    try:
        async with open_store(settings) as store:
            record = await store.get(realm_id)
            if record is None:
                print(f"qbo-gateway: no tokens stored for realm {realm_id}", file=err)
                return 1
            try:
                await _oauth(settings, http, clock).revoke(record.refresh_token)
            except TransientTokenError as exc:
                print(f"qbo-gateway: revoke failed, tokens kept: {exc}", file=err)
                return 1
            except (InvalidGrant, OAuthError) as exc:
                # Intuit no longer honours the token: nothing left to revoke there.
                print(f"note: Intuit refused the revoke ({exc}); removing the realm", file=err)
            await store.delete(realm_id)
    except (InvalidKeys, StateUnavailable) as exc:
        print(f"qbo-gateway: {exc}", file=err)
        return 1
    finally:
        if own_session:
            await http.close()
    print(f"revoked and removed realm {realm_id}", file=out)
    return 0


async def connect(
    settings: Settings,
    *,
    port: int = 8765,
    out: TextIO | None = None,
    err: TextIO | None = None,
    wait_seconds: float = CONNECT_TIMEOUT,
    ready: asyncio.Event | None = None,
    urls: list[str] | None = None,
) -> int:
    """Run the authorization-code flow with a one-off local callback listener.

    The redirect URI is QBO_REDIRECT_URI when set (its port and path are served here),
    else http://localhost:<port>/oauth/callback; it must be registered with the Intuit app.
    """
    out, err = out or sys.stdout, err or sys.stderr
    clock = SystemClock()
    redirect_uri = settings.redirect_uri or f"http://localhost:{port}{CALLBACK_PATH}"
    parts = urlsplit(redirect_uri)
    listen_port = parts.port or port
    done: asyncio.Future[TokenRecord] = asyncio.get_running_loop().create_future()

    def finished(record: TokenRecord) -> None:
        if not done.done():
            done.set_result(record)

    try:
        async with open_store(settings) as store, aiohttp.ClientSession() as session:
            oauth = _oauth(settings, session, clock)
            manager = TokenManager(
                store=store,
                locks=MemoryLocks(clock),
                oauth=oauth,
                clock=clock,
                metrics=Metrics(CollectorRegistry()),
                observer=NullObserver(),
                token_timeout=settings.token_timeout_seconds,
                lock_lease=max(60.0, settings.token_timeout_seconds * 4 + 10),
            )
            flow = ConnectFlow(
                oauth=oauth,
                tokens=manager,
                states=MemoryOAuthStates(clock),
                redirect_uri=redirect_uri,
            )
            app = web.Application()
            app.add_routes(
                connect_routes(
                    flow, callback_path=parts.path or CALLBACK_PATH, on_connected=finished
                )
            )
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, "127.0.0.1", listen_port).start()
            except OSError as exc:
                await runner.cleanup()
                print(
                    f"qbo-gateway: cannot listen on port {listen_port} ({exc.strerror}); if the "
                    "gateway is running, open its ops listener's /oauth/connect instead",
                    file=err,
                )
                return 1
            try:
                url = await flow.start()
                if urls is not None:
                    urls.append(url)
                print("Open this URL in a browser and authorize the app:", file=out)
                print(url, file=out)
                if ready is not None:
                    ready.set()
                record = await asyncio.wait_for(done, wait_seconds)
            except TimeoutError:
                print("qbo-gateway: no callback arrived in time", file=err)
                return 1
            finally:
                await runner.cleanup()
    except (InvalidKeys, StateUnavailable) as exc:
        print(f"qbo-gateway: {exc}", file=err)
        return 1
    print(f"connected realm {record.realm_id}", file=out)
    return 0
