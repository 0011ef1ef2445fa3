"""The OAuth connect flow end to end: gateway routes -> simulator authorize -> callback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from qbo_gateway.clock import ManualClock
from qbo_gateway.metrics import Metrics
from qbo_gateway.oauth.company_check import CompanyCheck
from qbo_gateway.oauth.connect import (
    CALLBACK_PATH,
    ConnectFlow,
    MemoryOAuthStates,
    OAuthStates,
    RedisOAuthStates,
)
from qbo_gateway.oauth.connect import connect_routes as make_routes
from qbo_gateway.oauth.intuit import OAuthClient, new_pkce, s256_challenge
from qbo_gateway.observe import NullObserver
from qbo_gateway.simulator import SIM_CLIENT_ID, SIM_CLIENT_SECRET, Simulator
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.locks import MemoryLocks
from qbo_gateway.state.redis_client import make_redis
from qbo_gateway.tokens.crypto import TokenCipher, generate_key
from qbo_gateway.tokens.manager import TokenManager
from qbo_gateway.tokens.records import TokenRecord
from qbo_gateway.tokens.store_sqlite import SqliteTokenStore
from tests.redis_server import RedisServer


@dataclass
class Setup:
    clock: ManualClock
    sim: Simulator
    flow: ConnectFlow
    gateway: str
    store: SqliteTokenStore
    session: aiohttp.ClientSession


@pytest.fixture(params=["memory", "redis"])
async def setup(
    request: pytest.FixtureRequest,
    aiohttp_server: Any,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_prefix: str,
) -> AsyncIterator[Setup]:
    clock = ManualClock()
    sim = Simulator(clock=clock.now)
    sim_server = await aiohttp_server(sim.make_app())
    base = str(sim_server.make_url("")).rstrip("/")
    session = aiohttp.ClientSession()
    oauth = OAuthClient(
        session=session,
        client_id=SIM_CLIENT_ID,
        client_secret=SIM_CLIENT_SECRET,
        token_url=f"{base}/oauth2/v1/tokens/bearer",
        authorize_url=f"{base}/connect/oauth2",
        revoke_url=f"{base}/v2/oauth2/tokens/revoke",
        clock=clock,
    )
    store = SqliteTokenStore.in_dir(tmp_path, TokenCipher(generate_key()))
    manager = TokenManager(
        store=store,
        locks=MemoryLocks(clock),
        oauth=oauth,
        clock=clock,
        metrics=Metrics(CollectorRegistry()),
        observer=NullObserver(),
    )
    redis = None
    states: OAuthStates
    if request.param == "memory":
        states = MemoryOAuthStates(clock)
    else:
        redis = make_redis(redis_server.url)
        states = RedisOAuthStates(redis, RedisKeys(redis_prefix))
    company = CompanyCheck(session=session, api_base=base, minor_version=75)
    flow = ConnectFlow(oauth=oauth, tokens=manager, states=states, redirect_uri="", company=company)

    async def guard(req: web.Request) -> bool:
        return req.headers.get("Authorization") == "Bearer admin-token"

    app = web.Application()
    app.add_routes(make_routes(flow, guard=guard))
    gw = await aiohttp_server(app)
    flow.redirect_uri = str(gw.make_url(CALLBACK_PATH))
    yield Setup(clock, sim, flow, str(gw.make_url("")).rstrip("/"), store, session)
    await session.close()
    await store.close()
    if redis is not None:
        await redis.aclose()


ADMIN = {"Authorization": "Bearer admin-token"}
MINE = "1234567890"
VICTIM = "4620816365178923"


async def authorize(s: Setup) -> str:
    """Follow /oauth/connect to Intuit's authorize page; return the callback URL it sends."""
    async with s.session.get(
        f"{s.gateway}/oauth/connect", headers=ADMIN, allow_redirects=False
    ) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["scope"] == ["com.intuit.quickbooks.accounting"]
    async with s.session.get(location, allow_redirects=False) as resp:
        assert resp.status == 302
        return resp.headers["Location"]


async def test_connect_stores_the_new_realm(setup: Setup) -> None:
    callback = await authorize(setup)
    realm_id = parse_qs(urlsplit(callback).query)["realmId"][0]
    async with setup.session.get(callback) as resp:
        assert resp.status == 200
        assert realm_id in await resp.text()
    record = await setup.store.get(realm_id)
    assert record is not None and record.access_token and not record.needs_reconnect
    assert record.refresh_hard_expires_at is not None
    # the stored tokens are live at the simulator: a refresh with them works
    status = await setup.flow.tokens.force_refresh(realm_id)
    assert status.version == record.version + 1
    # the state is single use: replaying the callback is refused
    async with setup.session.get(callback) as resp:
        assert resp.status == 400
        assert "state" in await resp.text()


async def test_connect_needs_the_guard(setup: Setup) -> None:
    async with setup.session.get(f"{setup.gateway}/oauth/connect", allow_redirects=False) as resp:
        assert resp.status == 401


async def test_callback_with_unknown_state_or_denial_is_refused(setup: Setup) -> None:
    callback = await authorize(setup)
    forged = callback.replace("state=", "state=x")
    async with setup.session.get(forged) as resp:
        assert resp.status == 400
    async with setup.session.get(
        f"{setup.gateway}{CALLBACK_PATH}?error=access_denied&state=abc"
    ) as resp:
        assert resp.status == 400
    assert await setup.flow.tokens.realm_ids() == []


async def test_state_expires(setup: Setup) -> None:
    setup.flow.state_ttl = 0.2
    callback = await authorize(setup)
    if isinstance(setup.flow.states, MemoryOAuthStates):
        setup.clock.advance(1)
    else:
        await asyncio.sleep(0.3)  # Redis expires keys on its own (real) clock
    async with setup.session.get(callback) as resp:
        assert resp.status == 400
    assert await setup.flow.tokens.realm_ids() == []


def test_pkce_challenge_is_rfc_7636_s256() -> None:
    # The worked example of RFC 7636, appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    pair = new_pkce()
    assert 43 <= len(pair.verifier) <= 128
    assert pair.challenge == s256_challenge(pair.verifier)
    assert new_pkce().verifier != pair.verifier


async def consent(s: Setup, *, link_realm: str | None = None, company: str | None = None) -> str:
    """A consent through a connect link (a reconnect link with `link_realm`), given at
    Intuit for `company` (a new company when None); returns the callback URL."""
    url = f"{s.gateway}/oauth/connect" + (f"?realm={link_realm}" if link_realm else "")
    async with s.session.get(url, headers=ADMIN, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
    if company is not None:
        location += f"&realm_id={company}"  # the company the person picks at Intuit
    async with s.session.get(location, allow_redirects=False) as resp:
        assert resp.status == 302
        return str(resp.headers["Location"])


def with_realm(callback: str, realm: str) -> str:
    claimed = parse_qs(urlsplit(callback).query)["realmId"][0]
    return callback.replace(f"realmId={claimed}", f"realmId={realm}")


async def connected(s: Setup, realm: str) -> TokenRecord:
    pair = s.sim.add_realm(realm)
    return await s.flow.tokens.import_tokens(
        realm, pair.refresh_token, pair.access_token, pair.access_expires_at
    )


async def still_works(s: Setup, before: TokenRecord) -> None:
    """The realm keeps its tokens, and its refresh token is still live at Intuit."""
    assert await s.store.get(before.realm_id) == before
    status = await s.flow.tokens.force_refresh(before.realm_id)
    assert status.version == before.version + 1 and not status.needs_reconnect


async def test_forged_realm_id_never_touches_a_live_realm(setup: Setup) -> None:
    victim = await connected(setup, VICTIM)
    forged = with_realm(await consent(setup), VICTIM)  # consent for a new company
    async with setup.session.get(forged) as resp:
        assert resp.status == 409
        assert "reconnect link" in await resp.text()
    await still_works(setup, victim)
    assert setup.sim.invalid_grants == 0


async def test_forged_realm_id_is_refused_unless_the_token_reads_that_company(
    setup: Setup,
) -> None:
    setup.sim.add_realm(VICTIM)  # known to Intuit, not connected to the gateway
    forged = with_realm(await consent(setup), VICTIM)
    async with setup.session.get(forged) as resp:
        assert resp.status == 403
        assert "not for realm" in await resp.text()
    assert await setup.flow.tokens.realm_ids() == []


async def test_a_reconnect_link_works_for_its_realm_only(setup: Setup) -> None:
    mine = await connected(setup, MINE)
    victim = await connected(setup, VICTIM)
    # The link for MINE, consent given for VICTIM's company: refused by the link's binding.
    async with setup.session.get(await consent(setup, link_realm=MINE, company=VICTIM)) as resp:
        assert resp.status == 403
    assert await setup.store.get(VICTIM) == victim
    # The link for MINE, consent for a new company, realmId edited to MINE: the token
    # cannot read MINE's company.
    forged = with_realm(await consent(setup, link_realm=MINE), MINE)
    async with setup.session.get(forged) as resp:
        assert resp.status == 403
    assert await setup.store.get(MINE) == mine
    # The link for MINE, consent for MINE: the realm's tokens are replaced, and work.
    async with setup.session.get(await consent(setup, link_realm=MINE, company=MINE)) as resp:
        assert resp.status == 200
    record = await setup.store.get(MINE)
    assert record is not None and record.version == mine.version + 1
    await still_works(setup, record)
    await still_works(setup, victim)
    assert setup.sim.invalid_grants == 0
