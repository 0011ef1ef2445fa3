"""`qbo-gateway connect`: connect a new realm from a terminal, without the daemon.

Intuit's consent screen redirects the browser to a callback URL registered with the app, so
this command serves that one callback on a short-lived local listener, prints the consent
link, and stores the realm's first token pair in the daemon's store once Intuit redirects.
When the daemon runs, its ops listener's `/oauth/connect` does the same.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from qbo_gateway.clock import SystemClock
from qbo_gateway.commands.tokens import open_store
from qbo_gateway.metrics import Metrics
from qbo_gateway.oauth.connect import (
    CALLBACK_PATH,
    NOT_CONFIGURED,
    ConnectFlow,
    MemoryOAuthStates,
    connect_routes,
)
from qbo_gateway.oauth.wiring import company_check, oauth_client
from qbo_gateway.observe import NullObserver
from qbo_gateway.settings import Settings, secret_text
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.locks import MemoryLocks
from qbo_gateway.tokens.crypto import InvalidKeys
from qbo_gateway.tokens.manager import TokenManager
from qbo_gateway.tokens.records import TokenRecord, TokenStore

CONNECT_TIMEOUT = 600.0


@dataclass
class _Terminal:
    out: TextIO
    err: TextIO
    wait_seconds: float
    ready: asyncio.Event | None
    urls: list[str] | None


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
    term = _Terminal(out or sys.stdout, err or sys.stderr, wait_seconds, ready, urls)
    if not settings.client_id or not secret_text(settings.client_secret):
        # An authorize URL with an empty client_id only gets an error page from Intuit.
        print(f"qbo-gateway connect: {NOT_CONFIGURED}", file=term.err)
        return 2
    redirect_uri = settings.redirect_uri or f"http://localhost:{port}{CALLBACK_PATH}"
    try:
        async with open_store(settings) as store, aiohttp.ClientSession() as session:
            flow = _one_off_flow(settings, store, session, redirect_uri)
            record = await _serve_callback(flow, redirect_uri, port, term)
    except (InvalidKeys, StateUnavailable) as exc:
        print(f"qbo-gateway: {exc}", file=term.err)
        return 1
    if record is None:
        return 1
    print(f"connected realm {record.realm_id}", file=term.out)
    return 0


def _one_off_flow(
    settings: Settings, store: TokenStore, session: aiohttp.ClientSession, redirect_uri: str
) -> ConnectFlow:
    clock = SystemClock()
    oauth = oauth_client(settings, session, clock)
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
    return ConnectFlow(
        oauth=oauth,
        tokens=manager,
        states=MemoryOAuthStates(clock),
        redirect_uri=redirect_uri,
        company=company_check(settings, session),
    )


async def _serve_callback(
    flow: ConnectFlow, redirect_uri: str, port: int, term: _Terminal
) -> TokenRecord | None:
    """Listen for Intuit's redirect, print the consent link, wait for the stored realm."""
    parts = urlsplit(redirect_uri)
    listen_port = parts.port or port
    done: asyncio.Future[TokenRecord] = asyncio.get_running_loop().create_future()

    def finished(record: TokenRecord) -> None:
        if not done.done():
            done.set_result(record)

    app = web.Application()
    callback_path = parts.path or CALLBACK_PATH
    app.add_routes(connect_routes(flow, callback_path=callback_path, on_connected=finished))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", listen_port).start()
    except OSError as exc:
        await runner.cleanup()
        print(
            f"qbo-gateway: cannot listen on port {listen_port} ({exc.strerror}); if the "
            "gateway is running, open its ops listener's /oauth/connect instead",
            file=term.err,
        )
        return None
    try:
        url = await flow.start()
        if term.urls is not None:
            term.urls.append(url)
        print("Open this URL in a browser and authorize the app:", file=term.out)
        print(url, file=term.out)
        if term.ready is not None:
            term.ready.set()
        return await asyncio.wait_for(done, term.wait_seconds)
    except TimeoutError:
        print("qbo-gateway: no callback arrived in time", file=term.err)
        return None
    finally:
        await runner.cleanup()
