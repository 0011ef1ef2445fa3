"""The OAuth builders: the Intuit token client and the connect flow, from settings."""

from __future__ import annotations

import aiohttp

from qbo_gateway.clock import Clock
from qbo_gateway.oauth.company_check import CompanyCheck
from qbo_gateway.oauth.connect import ConnectFlow, MemoryOAuthStates, RedisOAuthStates
from qbo_gateway.oauth.intuit import OAuthClient
from qbo_gateway.settings import Settings, secret_text
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import RedisClient
from qbo_gateway.tokens.manager import TokenManager


def oauth_client(settings: Settings, session: aiohttp.ClientSession, clock: Clock) -> OAuthClient:
    return OAuthClient(
        session=session,
        client_id=settings.client_id,
        client_secret=secret_text(settings.client_secret),
        token_url=settings.token_endpoint,
        authorize_url=settings.authorize_endpoint,
        revoke_url=settings.revoke_endpoint,
        clock=clock,
        timeout=settings.token_timeout_seconds,
    )


def redirect_uri(settings: Settings) -> str:
    if settings.redirect_uri:
        return settings.redirect_uri
    # A wildcard bind is reached on loopback by a browser on the same machine.
    wildcard = settings.ops_host in ("0.0.0.0", "::")  # noqa: S104 - compared, not bound
    host = "127.0.0.1" if wildcard else settings.ops_host
    return f"http://{host}:{settings.ops_port}/oauth/callback"


def connect_flow(
    settings: Settings,
    *,
    oauth: OAuthClient,
    tokens: TokenManager,
    redis: RedisClient | None,
    keys: RedisKeys,
    clock: Clock,
    session: aiohttp.ClientSession,
) -> ConnectFlow:
    # Redis mode: the callback may reach another replica than the one that started.
    states = RedisOAuthStates(redis, keys) if redis is not None else MemoryOAuthStates(clock)
    return ConnectFlow(
        oauth=oauth,
        tokens=tokens,
        states=states,
        redirect_uri=redirect_uri(settings),
        company=company_check(settings, session),
    )


def company_check(settings: Settings, session: aiohttp.ClientSession) -> CompanyCheck:
    """How a callback proves its realm: the new token reads that company's companyinfo."""
    return CompanyCheck(
        session=session,
        api_base=settings.api_base,
        minor_version=settings.minor_version,
        timeout=settings.token_timeout_seconds,
    )
