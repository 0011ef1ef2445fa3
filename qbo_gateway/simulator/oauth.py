"""Intuit's OAuth 2.0 endpoints: token (refresh and code grants), authorize, revoke.

The gateway's token handling is only as good as what it is tested against, so these follow
Intuit's rules closely: client authentication by HTTP Basic, strict refresh-token rotation,
single-use authorization codes with PKCE, and token faults injected before or after the grant.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import secrets
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web

from qbo_gateway.simulator.answers import oauth_error
from qbo_gateway.simulator.data import new_realm_id, seed_realm
from qbo_gateway.simulator.faults import take_faults
from qbo_gateway.simulator.injected import token_fault
from qbo_gateway.simulator.records import AuthCode, JSONDict, TokenPair, record

if TYPE_CHECKING:
    from qbo_gateway.simulator.core import Simulator

AUTH_CODE_TTL = 600.0


class OAuthRoutes:
    """The handlers of `/oauth2/v1/tokens/bearer`, `/connect/oauth2` and the revoke endpoint."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def token(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        recorded = await record(request, sim.clock)
        sim.token_requests.append(recorded)
        form = dict(parse_qsl(recorded.body.decode("utf-8", "replace")))
        grant_type = form.get("grant_type", "")
        if grant_type == "refresh_token":
            sim.token_calls += 1
        grant = sim.refresh_grants.get(form.get("refresh_token", ""))
        delay, rule = take_faults(
            sim.faults, "token", request.method, grant.realm_id if grant else None, request.path
        )
        await asyncio.sleep(sim.token_latency + delay)
        if sim.token_hold is not None:
            await sim.token_hold.wait()
        if rule is not None and not (rule.kind == "disconnect" and rule.after):
            return token_fault(request, rule)
        if not basic_ok(request, sim.client_id, sim.client_secret):
            return oauth_error(401, "invalid_client")
        if grant_type == "refresh_token":
            response = self._refresh_grant(request, form)
        elif grant_type == "authorization_code":
            response = self._code_grant(request, form)
        else:
            response = oauth_error(400, "unsupported_grant_type")
        if rule is not None:
            return token_fault(request, rule)
        return response

    def _refresh_grant(self, request: web.Request, form: dict[str, str]) -> web.Response:
        sim = self.sim
        token = form.get("refresh_token", "")
        grant = sim.refresh_grants.get(token)
        if grant is None or grant.expires_at <= sim.clock():
            sim.refresh_grants.pop(token, None)
            sim.invalid_grants += 1
            return oauth_error(400, "invalid_grant")
        return self._token_response(request, sim.issue_tokens(grant.realm_id), grant.realm_id)

    def _code_grant(self, request: web.Request, form: dict[str, str]) -> web.Response:
        sim = self.sim
        code = sim.auth_codes.pop(form.get("code", ""), None)
        if code is None or code.expires_at <= sim.clock():
            return oauth_error(400, "invalid_grant")
        if form.get("redirect_uri") != code.redirect_uri or code.client_id != sim.client_id:
            return oauth_error(400, "invalid_grant")
        if code.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            if code.code_challenge_method == "S256":
                digest = hashlib.sha256(verifier.encode()).digest()
                expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            else:
                expected = verifier
            if not verifier or not secrets.compare_digest(expected, code.code_challenge):
                return oauth_error(400, "invalid_grant")
        return self._token_response(request, sim.issue_tokens(code.realm_id), code.realm_id)

    def _token_response(self, request: web.Request, pair: TokenPair, realm_id: str) -> web.Response:
        sim = self.sim
        now = sim.clock()
        body: JSONDict = {
            "access_token": pair.access_token,
            "token_type": "bearer",
            "expires_in": round(pair.access_expires_at - now),
            "refresh_token": pair.refresh_token,
            "x_refresh_token_expires_in": round(pair.refresh_expires_at - now),
        }
        if request.headers.get("x-include-refresh-token-hard-expires-in", "").lower() == "true":
            hard = sim.realms[realm_id].connected_at + sim.hard_ttl
            body["x_refresh_token_hard_expires_in"] = round(hard - now)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        q = request.query
        if q.get("client_id") != sim.client_id:
            return web.Response(status=400, text="invalid client_id")
        if q.get("response_type") != "code" or not q.get("redirect_uri"):
            return web.Response(status=400, text="response_type=code and redirect_uri required")
        method = q.get("code_challenge_method", "plain")
        if q.get("code_challenge") and method not in ("S256", "plain"):
            return web.Response(status=400, text="unsupported code_challenge_method")
        realm_id = q.get("realm_id") or None
        if realm_id is None or realm_id not in sim.realms:
            realm_id = realm_id or new_realm_id()
            sim.realms[realm_id] = seed_realm(realm_id, sim.clock)
        code = "AB11" + secrets.token_urlsafe(24)
        sim.auth_codes[code] = AuthCode(
            realm_id=realm_id,
            client_id=sim.client_id,
            redirect_uri=q["redirect_uri"],
            code_challenge=q.get("code_challenge") or None,
            code_challenge_method=method,
            expires_at=sim.clock() + AUTH_CODE_TTL,
        )
        params = {"code": code, "realmId": realm_id}
        if "state" in q:
            params["state"] = q["state"]
        raise web.HTTPFound(add_query(q["redirect_uri"], params))

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        if not basic_ok(request, sim.client_id, sim.client_secret):
            return oauth_error(401, "invalid_client")
        try:
            token = (await request.json()).get("token", "")
        except (ValueError, AttributeError):
            return oauth_error(400, "invalid_request")
        grant = sim.refresh_grants.get(token) or sim.access_grants.get(token)
        if grant is not None:
            sim.revoke_realm(grant.realm_id)
        return web.Response(status=200)


def basic_ok(request: web.Request, client_id: str, client_secret: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    presented_id, sep, secret = decoded.partition(":")
    return bool(sep) and (
        secrets.compare_digest(presented_id, client_id)
        and secrets.compare_digest(secret, client_secret)
    )


def add_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit(parts._replace(query=query))
