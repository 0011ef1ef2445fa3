"""The token subcommands of `qbo-gateway`: import, list, revoke (connect is in connect.py).

They work on the same token store the daemon uses (the SQLite file in QBO_STATE_DIR, or
Redis), so an operator can seed, inspect or remove realms with the daemon running or not.
Each returns an exit code; none ever prints a token (list shows expiry times and status).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import TextIO

import aiohttp

from qbo_gateway.clock import Clock, SystemClock
from qbo_gateway.oauth.intuit import InvalidGrant, OAuthError, TransientTokenError
from qbo_gateway.oauth.wiring import oauth_client
from qbo_gateway.settings import Settings, parse_expiry
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import connect_redis
from qbo_gateway.tokens.crypto import InvalidKeys
from qbo_gateway.tokens.listing import DEFAULT_PAGE, RealmPage, page_of
from qbo_gateway.tokens.manager import new_record
from qbo_gateway.tokens.records import TokenStore
from qbo_gateway.tokens.store_redis import RedisTokenStore
from qbo_gateway.tokens.store_sqlite import SqliteTokenStore
from qbo_gateway.tokens.wiring import token_cipher


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[TokenStore]:
    """The daemon's token store, opened from settings for one command."""
    cipher = token_cipher(settings)
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


async def tokens_list(
    settings: Settings,
    *,
    as_json: bool = False,
    limit: int = DEFAULT_PAGE,
    after: str | None = None,
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
    page = page_of(list(records), clock.now(), limit=limit, after=after)
    if as_json:
        print(json.dumps([r.as_json() for r in page.realms], indent=2), file=out)
    else:
        _print_table(page, out)
    if page.next_after is not None:
        print(f"(more realms: --after {page.next_after})", file=err)
    return 0


def _print_table(page: RealmPage, out: TextIO) -> None:
    header = ("REALM", "ACCESS EXPIRES", "REFRESH EXPIRES", "HARD EXPIRY", "STATUS")
    table = [header] + [
        (
            r.realm_id,
            r.access_expires_at or "-",
            r.refresh_expires_at or "-",
            r.refresh_hard_expires_at or "-",
            r.status,
        )
        for r in page.realms
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )
    if not page.realms:
        print("(no realms stored)", file=out)


async def tokens_remove(
    settings: Settings,
    *,
    realm_id: str,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Forget a realm without telling Intuit (its grant stays valid there; see revoke)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        async with open_store(settings) as store:
            removed = await store.delete(realm_id)
    except (InvalidKeys, StateUnavailable) as exc:
        print(f"qbo-gateway: {exc}", file=err)
        return 1
    if not removed:
        print(f"qbo-gateway: no tokens stored for realm {realm_id}", file=err)
        return 1
    print(f"removed realm {realm_id}", file=out)
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
                await oauth_client(settings, http, clock).revoke(record.refresh_token)
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
