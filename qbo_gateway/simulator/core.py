"""`Simulator`: one in-process QuickBooks Online's state, its Python control API and its app.

The state (realms, grants, fault rules, counters, limits) is held here, in one object, so
tests can drive and inspect it directly while the HTTP handlers in `oauth.py`, `api.py` and
`control.py` read and change the same object; `make_app()` wires those handlers to routes.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web

from qbo_gateway.simulator.api import ApiRoutes
from qbo_gateway.simulator.control import ControlRoutes
from qbo_gateway.simulator.data import Realm, delete, new_realm_id, seed_realm, write
from qbo_gateway.simulator.faults import FaultRule
from qbo_gateway.simulator.oauth import OAuthRoutes
from qbo_gateway.simulator.records import AuthCode, Grant, JSONDict, RecordedRequest, TokenPair

SIM_CLIENT_ID = "sim-client"
# A well-known test credential of a fake server, not a secret.
SIM_CLIENT_SECRET = "sim-secret"  # noqa: S105
MAX_BODY = 512 * 1024 * 1024


class Simulator:
    """An in-process QuickBooks Online: state, counters and fault rules; `make_app()` serves it."""

    def __init__(
        self,
        *,
        client_id: str = SIM_CLIENT_ID,
        client_secret: str = SIM_CLIENT_SECRET,
        access_ttl: float = 3600.0,
        refresh_ttl: float = 101 * 86400.0,
        hard_ttl: float = 5 * 365 * 86400.0,
        clock: Callable[[], float] = time.time,
        keep_requests: int | None = None,
    ) -> None:
        # keep_requests bounds memory in long benchmark runs: only the newest N are kept.
        self.keep_requests = keep_requests
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.hard_ttl = hard_ttl
        self.clock = clock
        self.latency = 0.0
        self.token_latency = 0.0
        # Intuit's own per-realm limits, off by default: set them to see what a client that
        # ignores the limits would get (429 / 3001). `throttled` counts those answers.
        self.concurrency_limit: int | None = None
        self.rate_limit_per_minute: int | None = None
        self.throttled = 0
        self.admitted_at: dict[str, deque[float]] = {}
        self.faults: list[FaultRule] = []
        self.realms: dict[str, Realm] = {}
        self.access_grants: dict[str, Grant] = {}
        self.refresh_grants: dict[str, Grant] = {}
        self.auth_codes: dict[str, AuthCode] = {}
        self.token_calls = 0
        self.invalid_grants = 0  # refresh grants refused: a dead or unknown refresh token
        # Tests set an unset Event here to hold token calls until they set it.
        self.token_hold: asyncio.Event | None = None
        self.token_requests: list[RecordedRequest] = []
        self.api_requests: list[RecordedRequest] = []
        self.api_request_count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_by_realm: dict[str, int] = {}
        self.max_in_flight_by_realm: dict[str, int] = {}

    def add_realm(self, realm_id: str | None = None) -> TokenPair:
        """Connect a realm (seeded with customers and invoices) and return its tokens.

        Adding a realm that exists issues it a fresh pair, like reconnecting it.
        """
        realm_id = realm_id or new_realm_id()
        if realm_id not in self.realms:
            self.realms[realm_id] = seed_realm(realm_id, self.clock)
        return self.issue_tokens(realm_id)

    def issue_tokens(self, realm_id: str) -> TokenPair:
        realm = self.realms[realm_id]
        self.kill_refresh(realm)
        now = self.clock()
        access = secrets.token_urlsafe(32)
        refresh = "RT1-" + secrets.token_urlsafe(32)
        access_exp = now + self.access_ttl
        refresh_exp = min(now + self.refresh_ttl, realm.connected_at + self.hard_ttl)
        self.access_grants[access] = Grant(realm_id, access_exp)
        self.refresh_grants[refresh] = Grant(realm_id, refresh_exp)
        realm.refresh_token = refresh
        return TokenPair(access, refresh, access_exp, refresh_exp)

    def kill_refresh(self, realm: Realm) -> None:
        """Strict rotation: a realm has one live refresh token; issuing or revoking kills it."""
        if realm.refresh_token is not None:
            self.refresh_grants.pop(realm.refresh_token, None)
            realm.refresh_token = None

    def expire_access_token(self, realm_id: str) -> None:
        for token in [t for t, g in self.access_grants.items() if g.realm_id == realm_id]:
            del self.access_grants[token]

    def revoke_realm(self, realm_id: str) -> None:
        """Kill every token of a realm (what Intuit's revoke does to the grant)."""
        self.expire_access_token(realm_id)
        realm = self.realms.get(realm_id)
        if realm is not None:
            self.kill_refresh(realm)

    def realm_ids(self) -> list[str]:
        return list(self.realms)

    def entity(self, realm_id: str, entity: str, entity_id: str) -> JSONDict | None:
        return self.realms[realm_id].entities.get(entity, {}).get(entity_id)

    def edit(self, realm_id: str, entity: str, entity_id: str, changes: JSONDict) -> JSONDict:
        """A change made in QuickBooks itself (never seen by the gateway): a sparse update."""
        realm = self.realms[realm_id]
        current = realm.entities[entity][entity_id]
        payload = {**changes, "Id": entity_id, "SyncToken": current["SyncToken"], "sparse": True}
        return write(realm, entity, payload, self.clock())

    def remove(self, realm_id: str, entity: str, entity_id: str) -> None:
        """A delete made in QuickBooks itself."""
        realm = self.realms[realm_id]
        current = realm.entities[entity][entity_id]
        delete(realm, entity, {"Id": entity_id, "SyncToken": current["SyncToken"]}, self.clock())

    def inject(self, rule: FaultRule) -> None:
        self.faults.append(rule)

    def clear_faults(self) -> None:
        self.faults.clear()

    def reset_stats(self) -> None:
        self.token_calls = 0
        self.invalid_grants = 0
        self.token_requests.clear()
        self.api_requests.clear()
        self.api_request_count = 0
        self.max_in_flight = self.in_flight
        self.throttled = 0
        self.max_in_flight_by_realm = {r: n for r, n in self.in_flight_by_realm.items() if n}

    def stats(self) -> JSONDict:
        return {
            "token_calls": self.token_calls,
            "invalid_grants": self.invalid_grants,
            "token_requests": len(self.token_requests),
            "api_requests": self.api_request_count,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "max_in_flight_by_realm": dict(self.max_in_flight_by_realm),
            "realms": self.realm_ids(),
            "faults": [rule.to_json() for rule in self.faults],
            "latency": self.latency,
            "token_latency": self.token_latency,
            "concurrency_limit": self.concurrency_limit,
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "throttled": self.throttled,
        }

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app[SIMULATOR_KEY] = self
        oauth, ctl, api = OAuthRoutes(self), ControlRoutes(self), ApiRoutes(self)
        app.router.add_post("/oauth2/v1/tokens/bearer", oauth.token)
        app.router.add_get("/connect/oauth2", oauth.authorize)
        app.router.add_post("/v2/oauth2/tokens/revoke", oauth.revoke)
        app.router.add_post("/_sim/realms", ctl.realms)
        app.router.add_post("/_sim/realms/{realm}/expire-access", ctl.expire)
        app.router.add_post("/_sim/faults", ctl.add_fault)
        app.router.add_delete("/_sim/faults", ctl.clear_faults)
        app.router.add_post("/_sim/latency", ctl.latency)
        app.router.add_post("/_sim/limits", ctl.limits)
        app.router.add_get("/_sim/stats", ctl.stats)
        app.router.add_post("/_sim/reset", ctl.reset)
        app.router.add_route("*", "/v3/company/{realm}/{tail:.*}", api.handle)
        return app


SIMULATOR_KEY = web.AppKey("qbo_simulator", Simulator)
