"""Realm lifecycle over the ops listener, for services that onboard their customers' companies.

Without it, adding or removing a realm meant a shell in the pod (`tokens import`). Each
route is an admin action (`Authorization: Bearer <QBO_ADMIN_TOKEN>`) with a twin on the
command line, and none ever answers with a token:

    GET    /admin/realms?limit=&after=           realms, status and expiry times, paged
    GET    /admin/realms/{realmId}               one realm
    POST   /admin/realms                         import tokens (409 unless "force": true)
    POST   /admin/realms/{realmId}/revoke        revoke the grant at Intuit, then forget it
    DELETE /admin/realms/{realmId}               forget it here only
    POST   /admin/realms/connect-link            a consent link for a new realm
    POST   /admin/realms/{realmId}/connect-link  a consent link to reconnect that realm
    POST   /admin/realms/{realmId}/reset-circuit close the realm's circuit now

A connect link may carry `return_to` (on `QBO_CONNECT_RETURN_URLS`): after the callback
the person is sent there with `outcome` and `realm_id` added to the query.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from qbo_gateway.admission.gate import Admitter
from qbo_gateway.clock import Clock
from qbo_gateway.faults import BadPath, GatewayError, UnknownRealm, gateway_fault, render_fault
from qbo_gateway.oauth.connect import ConnectFlow, NotConfigured
from qbo_gateway.oauth.intuit import OAuthError, TransientTokenError
from qbo_gateway.oauth.return_to import ReturnUrlRefused, ReturnUrls
from qbo_gateway.ops.listener import admin_authorized, admin_refusal
from qbo_gateway.settings import parse_expiry
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.tokens.listing import DEFAULT_PAGE, listed, page_of
from qbo_gateway.tokens.manager import TokenExists, TokenManager

log = structlog.get_logger(__name__)

REALM = r"{realm_id:\d{1,32}}"
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True)
class RealmsApi:
    tokens: TokenManager
    admitter: Admitter
    flow: ConnectFlow
    return_urls: ReturnUrls
    clock: Clock
    admin_token: str | None

    def routes(self) -> list[web.RouteDef]:
        guarded = self._guarded
        return [
            web.get("/admin/realms", guarded(self.list_realms)),
            web.post("/admin/realms", guarded(self.import_realm)),
            web.post("/admin/realms/connect-link", guarded(self.connect_link)),
            web.get(f"/admin/realms/{REALM}", guarded(self.show_realm)),
            web.delete(f"/admin/realms/{REALM}", guarded(self.remove_realm)),
            web.post(f"/admin/realms/{REALM}/revoke", guarded(self.revoke_realm)),
            web.post(f"/admin/realms/{REALM}/connect-link", guarded(self.connect_link)),
            web.post(f"/admin/realms/{REALM}/reset-circuit", guarded(self.reset_circuit)),
        ]

    def _guarded(self, handler: Any) -> Any:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not admin_authorized(request, self.admin_token):
                return admin_refusal(self.admin_token)
            try:
                response: web.StreamResponse = await handler(request)
            except GatewayError as err:
                return render_fault(err)
            except StateUnavailable:
                return gateway_fault(
                    "GW-UPSTREAM-UNAVAILABLE", 503, "The state backend is unreachable"
                )
            return response

        return guarded

    async def list_realms(self, request: web.Request) -> web.Response:
        limit = _int_param(request, "limit", DEFAULT_PAGE)
        after = request.query.get("after") or None
        if after is not None and not after.isdigit():
            raise BadPath("after must be a realm id")
        statuses = await self.tokens.statuses()
        page = page_of(list(statuses), self.clock.now(), limit=limit, after=after)
        return web.json_response(page.as_json(), headers=_NO_STORE)

    async def show_realm(self, request: web.Request) -> web.Response:
        realm_id = request.match_info["realm_id"]
        status = await self.tokens.status(realm_id)
        if status is None:
            raise UnknownRealm(f"no tokens for realm {realm_id}")
        return web.json_response(listed(status, self.clock.now()).as_json(), headers=_NO_STORE)

    async def import_realm(self, request: web.Request) -> web.Response:
        doc = await _json_object(request)
        realm_id = str(doc.get("realm_id", ""))
        refresh = doc.get("refresh_token")
        if not realm_id.isdigit():
            raise BadPath("realm_id must be digits only")
        if not isinstance(refresh, str) or not refresh:
            raise BadPath("refresh_token is required")
        access = doc.get("access_token")
        try:
            expires = parse_expiry(doc.get("access_expires_at"))
        except ValueError as exc:
            raise BadPath(f"access_expires_at: {exc}") from None
        try:
            record = await self.tokens.import_tokens(
                realm_id,
                refresh,
                access if isinstance(access, str) and access else None,
                expires,
                force=doc.get("force") is True,
            )
        except TokenExists:
            return gateway_fault(
                "GW-REALM-EXISTS",
                409,
                "The realm already has tokens",
                f'realm {realm_id} is stored; send "force": true to replace its tokens',
            )
        log.info("admin_realm_imported", realm_id=realm_id, version=record.version)
        body = listed(record, self.clock.now()).as_json()
        return web.json_response(body, status=201, headers=_NO_STORE)

    async def remove_realm(self, request: web.Request) -> web.Response:
        realm_id = request.match_info["realm_id"]
        if not await self.tokens.remove(realm_id):
            raise UnknownRealm(f"no tokens for realm {realm_id}")
        log.info("admin_realm_removed", realm_id=realm_id)
        return web.json_response({"realm_id": realm_id, "removed": True}, headers=_NO_STORE)

    async def revoke_realm(self, request: web.Request) -> web.Response:
        realm_id = request.match_info["realm_id"]
        intuit = "revoked"
        try:
            if not await self.tokens.revoke(realm_id):
                raise UnknownRealm(f"no tokens for realm {realm_id}")
        except TransientTokenError as exc:
            return gateway_fault(
                "GW-UPSTREAM-UNAVAILABLE",
                502,
                "Intuit's revoke endpoint failed; the realm's tokens are kept",
                str(exc),
            )
        except OAuthError:
            # Intuit no longer honours the grant: nothing is left to revoke there.
            intuit = "refused (grant already invalid)"
            await self.tokens.remove(realm_id)
        log.info("admin_realm_revoked", realm_id=realm_id, intuit=intuit)
        body = {"realm_id": realm_id, "revoked": True, "removed": True, "intuit": intuit}
        return web.json_response(body, headers=_NO_STORE)

    async def reset_circuit(self, request: web.Request) -> web.Response:
        """Close the circuit without waiting for the half-open probe (QBO is known good)."""
        realm_id = request.match_info["realm_id"]
        if await self.tokens.status(realm_id) is None:
            raise UnknownRealm(f"no tokens for realm {realm_id}")
        await self.admitter.reset_breaker(realm_id)
        log.warning("admin_circuit_reset", realm_id=realm_id)
        return web.json_response({"realm_id": realm_id, "breaker": "closed"}, headers=_NO_STORE)

    async def connect_link(self, request: web.Request) -> web.Response:
        realm_id = request.match_info.get("realm_id")
        doc = await _json_object(request, optional=True)
        return_to = doc.get("return_to")
        if return_to is not None:
            try:
                return_to = self.return_urls.check(str(return_to))
            except ReturnUrlRefused as exc:
                raise BadPath(str(exc)) from None
        if realm_id is not None and await self.tokens.status(realm_id) is None:
            raise UnknownRealm(f"no tokens for realm {realm_id}: make a link for a new realm")
        try:
            url = await self.flow.start(realm_id=realm_id, return_to=return_to)
        except NotConfigured as exc:
            return gateway_fault(
                "GW-NOT-CONFIGURED", 503, "Connecting realms is not set up", str(exc)
            )
        log.info("admin_connect_link", realm_id=realm_id, return_to=return_to is not None)
        body = {
            "url": url,
            "realm_id": realm_id,
            "expires_in": int(self.flow.state_ttl),
            "redirect_uri": self.flow.redirect_uri,
        }
        return web.json_response(body, headers=_NO_STORE)


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise BadPath(f"{name} must be a positive integer")
    return int(raw)


async def _json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and optional:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        raise BadPath("the body must be a JSON object") from None
    if not isinstance(doc, dict):
        raise BadPath("the body must be a JSON object")
    return doc
