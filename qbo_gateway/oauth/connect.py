"""Connecting a new realm: Intuit's authorization-code flow with PKCE.

`GET /oauth/connect` sends the browser to Intuit with a fresh `state` and an S256 code
challenge; `GET /oauth/callback` takes the state back exactly once (it expires, and a
replayed callback finds nothing), exchanges the code with the matching verifier and stores
the realm's tokens. State lives in the state backend, so with Redis the callback may land on
any replica.
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
from aiohttp import web

from qbo_gateway.clock import Clock
from qbo_gateway.faults import gateway_fault
from qbo_gateway.logs import failure
from qbo_gateway.oauth.company_check import CompanyCheck, CompanyCheckFailed
from qbo_gateway.oauth.intuit import (
    InvalidClient,
    InvalidGrant,
    OAuthClient,
    OAuthError,
    TokenGrant,
    new_pkce,
    new_state,
)
from qbo_gateway.oauth.return_to import Outcome, with_outcome
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import REDIS_DOWN_ERRORS, RedisClient
from qbo_gateway.tokens.records import TokenRecord, TokenStatus

log = structlog.get_logger(__name__)

STATE_TTL = 600.0
CONNECT_PATH = "/oauth/connect"
CALLBACK_PATH = "/oauth/callback"
_BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class ConnectError(Exception):
    """The callback cannot complete; `status` is what the browser is answered with, and
    `return_to` where to send the person (set once the state is known)."""

    def __init__(self, message: str, status: int = 400, return_to: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.return_to = return_to


NOT_CONFIGURED = (
    "QBO_CLIENT_ID and QBO_CLIENT_SECRET are not set: create an app at Intuit's developer "
    "portal and set its credentials first"
)


class NotConfigured(ConnectError):
    """No Intuit app credentials: a consent link would carry an empty client_id."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 503)


@dataclass(frozen=True)
class Connected:
    record: TokenRecord
    return_to: str | None = None


class OAuthStates(Protocol):
    async def put(self, state: str, data: dict[str, str], ttl: float) -> None: ...

    async def take(self, state: str) -> dict[str, str] | None: ...


class MemoryOAuthStates:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._states: dict[str, tuple[dict[str, str], float]] = {}

    async def put(self, state: str, data: dict[str, str], ttl: float) -> None:
        now = self._clock.now()
        self._states = {k: v for k, v in self._states.items() if v[1] > now}  # drop lapsed
        self._states[state] = (dict(data), now + ttl)

    async def take(self, state: str) -> dict[str, str] | None:
        entry = self._states.pop(state, None)
        if entry is None or entry[1] <= self._clock.now():
            return None
        return entry[0]


class RedisOAuthStates:
    def __init__(self, redis: RedisClient, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    async def put(self, state: str, data: dict[str, str], ttl: float) -> None:
        try:
            await self._redis.set(
                self._keys.oauth_state(state), json.dumps(data), px=max(1, int(ttl * 1000))
            )
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable(f"redis unreachable: {type(exc).__name__}") from exc

    async def take(self, state: str) -> dict[str, str] | None:
        try:
            raw = await self._redis.getdel(self._keys.oauth_state(state))  # single use
        except REDIS_DOWN_ERRORS as exc:
            raise StateUnavailable(f"redis unreachable: {type(exc).__name__}") from exc
        if raw is None:
            return None
        data = json.loads(raw)
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


class RealmTokens(Protocol):
    """What the flow needs of the token manager: whether a realm is live, and storing the
    first pair of a connected realm."""

    async def status(self, realm_id: str) -> TokenStatus | None: ...

    async def import_tokens(
        self,
        realm_id: str,
        refresh_token: str,
        access_token: str | None = None,
        access_expires_at: float | None = None,
        *,
        force: bool = False,
        refresh_expires_at: float | None = None,
        refresh_hard_expires_at: float | None = None,
    ) -> TokenRecord: ...


@dataclass
class ConnectFlow:
    oauth: OAuthClient
    tokens: RealmTokens
    states: OAuthStates
    redirect_uri: str
    company: CompanyCheck
    state_ttl: float = STATE_TTL

    async def start(self, realm_id: str | None = None, *, return_to: str | None = None) -> str:
        """A fresh authorize URL (its state and verifier are kept for the callback).

        With `realm_id` the link reconnects exactly that realm: only a callback for it may
        replace its tokens. Without, the link connects a realm the gateway does not hold
        live tokens for. `return_to` (already checked against the allow list) is where the
        person is sent afterwards, with the outcome."""
        if not self.oauth.client_id:
            raise NotConfigured(NOT_CONFIGURED)
        if realm_id is not None and not realm_id.isdigit():
            raise ConnectError("realm ids are digits only")
        state = new_state()
        pkce = new_pkce()
        kept = {"verifier": pkce.verifier, "redirect_uri": self.redirect_uri}
        if realm_id is not None:
            kept["realm"] = realm_id
        if return_to:
            kept["return_to"] = return_to
        await self.states.put(state, kept, self.state_ttl)
        return self.oauth.authorize_url(
            redirect_uri=self.redirect_uri, state=state, code_challenge=pkce.challenge
        )

    async def abandon(self, state: str) -> str | None:
        """Intuit sent the person back without a code: drop the state, give its return_to."""
        kept = await self.states.take(state) if state else None
        return kept.get("return_to") if kept else None

    async def complete(self, *, code: str, state: str, realm_id: str) -> TokenRecord:
        connected = await self.complete_connection(code=code, state=state, realm_id=realm_id)
        return connected.record

    async def complete_connection(self, *, code: str, state: str, realm_id: str) -> Connected:
        if not realm_id.isdigit():
            raise ConnectError("the callback carries no valid realmId")
        if not code or not state:
            raise ConnectError("the callback carries no code or state")
        kept = await self.states.take(state)
        if kept is None:
            raise ConnectError("unknown, used or expired state: start the connection again")
        try:
            record = await self._connect(kept, code=code, realm_id=realm_id)
        except ConnectError as exc:
            exc.return_to = kept.get("return_to")
            raise
        return Connected(record, kept.get("return_to"))

    async def _connect(self, kept: dict[str, str], *, code: str, realm_id: str) -> TokenRecord:
        bound = kept.get("realm")
        if bound is not None and bound != realm_id:
            log.warning("oauth_callback_wrong_realm", bound_realm=bound, claimed_realm=realm_id)
            raise ConnectError(f"this link reconnects realm {bound} only", 403)
        # Before the code is exchanged: an exchange may end the realm's current grant.
        if bound is None and await self._live(realm_id):
            log.warning("oauth_callback_realm_live", realm_id=realm_id)
            raise ConnectError(
                f"realm {realm_id} is connected and working; to replace its tokens, open a "
                f"reconnect link for it ({CONNECT_PATH}?realm={realm_id})",
                409,
            )
        grant = await self._exchange(code, kept)
        await self._prove(grant.access_token, realm_id)
        record = await self.tokens.import_tokens(
            realm_id,
            grant.refresh_token,
            grant.access_token,
            grant.access_expires_at,
            force=True,
            refresh_expires_at=grant.refresh_expires_at,
            refresh_hard_expires_at=grant.refresh_hard_expires_at,
        )
        log.info(
            "realm_connected", realm_id=realm_id, version=record.version, reconnect=bool(bound)
        )
        return record

    async def _exchange(self, code: str, kept: dict[str, str]) -> TokenGrant:
        try:
            return await self.oauth.exchange_code(
                code, redirect_uri=kept["redirect_uri"], code_verifier=kept["verifier"]
            )
        except InvalidGrant as exc:
            raise ConnectError("Intuit refused the authorization code: start again") from exc
        except InvalidClient as exc:
            log.error("oauth_connect_invalid_client", **failure(exc))
            raise ConnectError("Intuit refused the app's client credentials", 502) from exc
        except OAuthError as exc:
            raise ConnectError(f"Intuit's token endpoint failed: {exc}", 502) from exc

    async def _prove(self, access_token: str, realm_id: str) -> None:
        """The callback's realmId is only a claim: the new token must read that company."""
        try:
            owns = await self.company.owns(access_token, realm_id)
        except CompanyCheckFailed as exc:
            raise ConnectError(f"cannot confirm the realm with QuickBooks: {exc}", 502) from exc
        if not owns:
            log.warning("oauth_callback_forged_realm", claimed_realm=realm_id)
            raise ConnectError(
                f"the authorization is not for realm {realm_id}: nothing was stored", 403
            )

    async def _live(self, realm_id: str) -> bool:
        status = await self.tokens.status(realm_id)
        return status is not None and not status.needs_reconnect


Guard = Callable[[web.Request], Awaitable[bool]]


def connect_routes(
    flow: ConnectFlow,
    *,
    guard: Guard | None = None,
    connect_path: str = CONNECT_PATH,
    callback_path: str = CALLBACK_PATH,
    on_connected: Callable[[TokenRecord], None] | None = None,
) -> list[web.RouteDef]:
    """`GET /oauth/connect` (behind `guard`, e.g. the admin check) and `GET /oauth/callback`
    (protected by the single-use state)."""

    async def connect(request: web.Request) -> web.StreamResponse:
        if guard is not None and not await guard(request):
            return gateway_fault(
                "GW-UNAUTHENTICATED", 401, "Admin token required", headers=_BEARER_CHALLENGE
            )
        realm = request.query.get("realm") or None
        try:
            url = await flow.start(realm)
        except ConnectError as exc:
            return _page(exc.status, str(exc))
        except StateUnavailable:
            return _page(503, "The state backend is unreachable; try again shortly.")
        raise web.HTTPFound(url, headers={"Cache-Control": "no-store"})

    async def callback(request: web.Request) -> web.StreamResponse:
        query = request.query
        realm_id = query.get("realmId", "")
        try:
            if "error" in query:
                return_to = await flow.abandon(query.get("state", ""))
                reason = query.get("error", "")[:64]
                message = f"Intuit did not authorize the connection ({reason})."
                return _finish(400, message, return_to, "denied", realm_id)
            done = await flow.complete_connection(
                code=query.get("code", ""), state=query.get("state", ""), realm_id=realm_id
            )
        except ConnectError as exc:
            log.warning("oauth_callback_refused", reason=str(exc))
            return _finish(exc.status, str(exc), exc.return_to, "failed", realm_id)
        except StateUnavailable:
            return _page(503, "The state backend is unreachable; try again shortly.")
        if on_connected is not None:
            on_connected(done.record)
        message = f"Realm {done.record.realm_id} is connected to the gateway."
        return _finish(200, message, done.return_to, "connected", done.record.realm_id)

    return [web.get(connect_path, connect), web.get(callback_path, callback)]


def _finish(
    status: int, message: str, return_to: str | None, outcome: Outcome, realm_id: str
) -> web.Response:
    """The person's page, or a redirect to the allowed `return_to` with the outcome."""
    if return_to is None:
        return _page(status, message)
    realm = realm_id if realm_id.isdigit() else None
    location = with_outcome(return_to, outcome=outcome, realm_id=realm)
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _page(status: int, message: str) -> web.Response:
    body = (
        "<!doctype html><html><head><title>qbo-gateway</title></head>"
        f"<body><p>{html.escape(message)}</p></body></html>"
    )
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )
