"""A stand-in for Intuit: OAuth endpoints, the Accounting API and fault injection.

Tests, the demo and benchmarks need a QuickBooks Online that answers over real sockets, can be
told to misbehave in every way the real one does (throttles, 5xx with HTML bodies, faults
inside a 200, dropped connections, dead refresh tokens) and counts what it received. It is
built from the Intuit facts in the design notes, never from gateway code: it imports only
aiohttp and the standard library, so it cannot agree with the gateway by sharing a mistake.

Routes: `POST /oauth2/v1/tokens/bearer`, `GET /connect/oauth2`, `POST /v2/oauth2/tokens/revoke`,
`/v3/company/{realmId}/...` (companyinfo, query, customer, invoice, batch, reports, cdc; any
other path with a body answers its size and sha256), and control routes under `/_sim/`:
`POST realms` {"realm_id"}, `POST realms/{realm}/expire-access`, `POST faults` (a FaultRule),
`DELETE faults`, `POST latency` {"api", "token"}, `POST limits` {"concurrency",
"per_minute"}, `GET stats`, `POST reset` (stats and faults).

Access tokens stay valid until they expire even after a refresh (as at Intuit); refresh
tokens rotate strictly: each use or re-issue kills the previous one at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import re
import secrets
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web

__all__ = [
    "API_FAULT_KINDS",
    "SIMULATOR_KEY",
    "TOKEN_FAULT_KINDS",
    "FaultRule",
    "RecordedRequest",
    "Simulator",
    "TokenPair",
    "run",
]

DEFAULT_REALM_ID = "9130349226472226"
SIM_CLIENT_ID = "sim-client"
# A well-known test credential of a fake server, not a secret.
SIM_CLIENT_SECRET = "sim-secret"  # noqa: S105
SEED_COUNT = 25
BATCH_MAX_ITEMS = 30
QUERY_DEFAULT_MAX = 100
QUERY_MAX = 1000
# Bodies above this are streamed with chunked encoding, as Intuit does for big reports.
STREAM_THRESHOLD = 256 * 1024
STREAM_CHUNK = 64 * 1024
AUTH_CODE_TTL = 600.0
MAX_BODY = 512 * 1024 * 1024

API_FAULT_KINDS = frozenset(
    {
        "throttle",
        "server_error",
        "server_error_html",
        "gateway_timeout",
        "unauthorized",
        "forbidden",
        "fault_in_200",
        "delay",
        "disconnect",
    }
)
TOKEN_FAULT_KINDS = frozenset(
    {"invalid_grant", "invalid_client", "server_error", "delay", "disconnect"}
)

JSONDict = dict[str, Any]


@dataclass
class RecordedRequest:
    """One request as the simulator received it (headers collapsed to one value each)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    access_expires_at: float
    refresh_expires_at: float


@dataclass
class FaultRule:
    """What to break, for which requests, how many times.

    `path` is a regex searched in the part of the path after `/v3/company/{realm}/` (for
    token rules, in the whole path). `realm_id` on a token rule matches the realm of the
    presented refresh token. `times=None` applies until cleared. A "delay" rule adds `delay`
    seconds and lets later rules still apply; any other kind answers the request.
    A "disconnect" rule with `after=True` processes the request first (the write happens,
    the refresh rotates) and then drops the connection: the response is lost.
    """

    kind: str
    target: str = "api"
    method: str | None = None
    realm_id: str | None = None
    path: str | None = None
    times: int | None = None
    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    xml: bool = False
    after: bool = False

    def __post_init__(self) -> None:
        kinds = {"api": API_FAULT_KINDS, "token": TOKEN_FAULT_KINDS}.get(self.target)
        if kinds is None:
            raise ValueError(f"target must be 'api' or 'token', not {self.target!r}")
        if self.kind not in kinds:
            raise ValueError(f"unknown {self.target} fault kind {self.kind!r}")
        if self.path is not None:
            re.compile(self.path)
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0")

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        if not isinstance(data, dict):
            raise ValueError("a fault rule is a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        if "kind" not in data:
            raise ValueError("a fault rule needs a kind")
        return cls(**data)

    def to_json(self) -> JSONDict:
        return asdict(self)

    def matches(self, method: str, realm_id: str | None, path: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.realm_id is not None and self.realm_id != realm_id:
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass
class _Grant:
    realm_id: str
    expires_at: float


@dataclass
class _AuthCode:
    realm_id: str
    client_id: str
    redirect_uri: str
    code_challenge: str | None
    code_challenge_method: str
    expires_at: float


@dataclass
class _Realm:
    realm_id: str
    connected_at: float
    entities: dict[str, dict[str, JSONDict]] = field(default_factory=dict)
    next_id: dict[str, int] = field(default_factory=dict)
    idempotent: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    refresh_token: str | None = None


class _FaultAnswer(Exception):
    """An entity operation failed with a QBO fault (status + body)."""

    def __init__(self, status: int, body: JSONDict) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


ENTITY_PATHS = {"customer": "Customer", "invoice": "Invoice"}
QUERY_RE = re.compile(
    r"^\s*select\s+(?P<what>\*|count\(\*\))\s+from\s+(?P<entity>\w+)"
    r"(?:\s+where\s+(?P<field>\w+)\s*=\s*'(?P<value>[^']*)')?"
    r"(?:\s+orderby\s+\w+(?:\s+(?:asc|desc))?)?"
    r"(?:\s+startposition\s+(?P<start>\d+))?"
    r"(?:\s+maxresults\s+(?P<max>\d+))?\s*;?\s*$",
    re.IGNORECASE,
)


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
        self._admitted_at: dict[str, deque[float]] = {}
        self.faults: list[FaultRule] = []
        self._realms: dict[str, _Realm] = {}
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self._codes: dict[str, _AuthCode] = {}
        self.token_calls = 0
        self.token_requests: list[RecordedRequest] = []
        self.api_requests: list[RecordedRequest] = []
        self.api_request_count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_by_realm: dict[str, int] = {}
        self.max_in_flight_by_realm: dict[str, int] = {}

    # ---- Python control API -------------------------------------------------------------

    def add_realm(self, realm_id: str | None = None) -> TokenPair:
        """Connect a realm (seeded with customers and invoices) and return its tokens.

        Adding a realm that exists issues it a fresh pair, like reconnecting it.
        """
        realm_id = realm_id or str(secrets.randbelow(9 * 10**15) + 10**15)
        if realm_id not in self._realms:
            self._realms[realm_id] = self._seed(realm_id)
        return self.issue_tokens(realm_id)

    def issue_tokens(self, realm_id: str) -> TokenPair:
        realm = self._realms[realm_id]
        self._kill_refresh(realm)
        now = self.clock()
        access = secrets.token_urlsafe(32)
        refresh = "RT1-" + secrets.token_urlsafe(32)
        access_exp = now + self.access_ttl
        refresh_exp = min(now + self.refresh_ttl, realm.connected_at + self.hard_ttl)
        self._access[access] = _Grant(realm_id, access_exp)
        self._refresh[refresh] = _Grant(realm_id, refresh_exp)
        realm.refresh_token = refresh
        return TokenPair(access, refresh, access_exp, refresh_exp)

    def expire_access_token(self, realm_id: str) -> None:
        for token in [t for t, g in self._access.items() if g.realm_id == realm_id]:
            del self._access[token]

    def revoke_realm(self, realm_id: str) -> None:
        """Kill every token of a realm (what Intuit's revoke does to the grant)."""
        self.expire_access_token(realm_id)
        realm = self._realms.get(realm_id)
        if realm is not None:
            self._kill_refresh(realm)

    def realm_ids(self) -> list[str]:
        return list(self._realms)

    def entity(self, realm_id: str, entity: str, entity_id: str) -> JSONDict | None:
        return self._realms[realm_id].entities.get(entity, {}).get(entity_id)

    def inject(self, rule: FaultRule) -> None:
        self.faults.append(rule)

    def clear_faults(self) -> None:
        self.faults.clear()

    def reset_stats(self) -> None:
        self.token_calls = 0
        self.token_requests.clear()
        self.api_requests.clear()
        self.api_request_count = 0
        self.max_in_flight = self.in_flight
        self.throttled = 0
        self.max_in_flight_by_realm = {r: n for r, n in self.in_flight_by_realm.items() if n}

    def stats(self) -> JSONDict:
        return {
            "token_calls": self.token_calls,
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
        app.router.add_post("/oauth2/v1/tokens/bearer", self._token)
        app.router.add_get("/connect/oauth2", self._authorize)
        app.router.add_post("/v2/oauth2/tokens/revoke", self._revoke)
        app.router.add_post("/_sim/realms", self._ctl_realms)
        app.router.add_post("/_sim/realms/{realm}/expire-access", self._ctl_expire)
        app.router.add_post("/_sim/faults", self._ctl_add_fault)
        app.router.add_delete("/_sim/faults", self._ctl_clear_faults)
        app.router.add_post("/_sim/latency", self._ctl_latency)
        app.router.add_post("/_sim/limits", self._ctl_limits)
        app.router.add_get("/_sim/stats", self._ctl_stats)
        app.router.add_post("/_sim/reset", self._ctl_reset)
        app.router.add_route("*", "/v3/company/{realm}/{tail:.*}", self._api)
        return app

    # ---- internals ------------------------------------------------------------------------

    def _kill_refresh(self, realm: _Realm) -> None:
        if realm.refresh_token is not None:
            self._refresh.pop(realm.refresh_token, None)
            realm.refresh_token = None

    def _seed(self, realm_id: str) -> _Realm:
        realm = _Realm(realm_id=realm_id, connected_at=self.clock())
        stamp = _iso(self.clock())
        customers: dict[str, JSONDict] = {}
        invoices: dict[str, JSONDict] = {}
        for n in range(1, SEED_COUNT + 1):
            cid = str(n)
            customers[cid] = {
                "Id": cid,
                "SyncToken": "0",
                "DisplayName": f"Customer {n}",
                "CompanyName": f"Company {n} Ltd",
                "PrimaryEmailAddr": {"Address": f"customer{n}@example.com"},
                "Active": True,
                "Balance": float(n * 10),
                "domain": "QBO",
                "sparse": False,
                "MetaData": {"CreateTime": stamp, "LastUpdatedTime": stamp},
            }
            amount = float(n * 100)
            invoices[cid] = {
                "Id": cid,
                "SyncToken": "0",
                "DocNumber": f"{1000 + n}",
                "TxnDate": "2026-01-01",
                "CustomerRef": {"value": cid, "name": f"Customer {n}"},
                "Line": [
                    {
                        "Id": "1",
                        "LineNum": 1,
                        "Amount": amount,
                        "DetailType": "SalesItemLineDetail",
                        "SalesItemLineDetail": {"ItemRef": {"value": "1", "name": "Services"}},
                    }
                ],
                "TotalAmt": amount,
                "Balance": amount,
                "domain": "QBO",
                "sparse": False,
                "MetaData": {"CreateTime": stamp, "LastUpdatedTime": stamp},
            }
        realm.entities = {"Customer": customers, "Invoice": invoices}
        realm.next_id = {"Customer": SEED_COUNT + 1, "Invoice": SEED_COUNT + 1}
        return realm

    def _take_faults(
        self, target: str, method: str, realm_id: str | None, path: str
    ) -> tuple[float, FaultRule | None]:
        """Consume matching rules: the summed delays and the first answering rule."""
        delay = 0.0
        for rule in list(self.faults):
            if rule.target != target or not rule.matches(method, realm_id, path):
                continue
            if rule.times is not None:
                rule.times -= 1
                if rule.times <= 0:
                    self.faults.remove(rule)
            if rule.kind == "delay":
                delay += rule.delay
                continue
            return delay, rule
        return delay, None

    async def _record(self, request: web.Request) -> RecordedRequest:
        body = await request.read() if request.body_exists else b""
        return RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
            at=self.clock(),
        )

    def _basic_ok(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        client_id, sep, secret = decoded.partition(":")
        return bool(sep) and (
            secrets.compare_digest(client_id, self.client_id)
            and secrets.compare_digest(secret, self.client_secret)
        )

    # ---- OAuth ---------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        self.token_requests.append(recorded)
        form = dict(parse_qsl(recorded.body.decode("utf-8", "replace")))
        grant_type = form.get("grant_type", "")
        if grant_type == "refresh_token":
            self.token_calls += 1
        grant = self._refresh.get(form.get("refresh_token", ""))
        delay, rule = self._take_faults(
            "token", request.method, grant.realm_id if grant else None, request.path
        )
        await asyncio.sleep(self.token_latency + delay)
        if rule is not None and not (rule.kind == "disconnect" and rule.after):
            return self._token_fault(request, rule)
        if not self._basic_ok(request):
            return _oauth_error(401, "invalid_client")
        if grant_type == "refresh_token":
            response = self._refresh_grant(request, form)
        elif grant_type == "authorization_code":
            response = self._code_grant(request, form)
        else:
            response = _oauth_error(400, "unsupported_grant_type")
        if rule is not None:
            return self._token_fault(request, rule)
        return response

    def _token_fault(self, request: web.Request, rule: FaultRule) -> web.Response:
        if rule.kind == "disconnect":
            return _drop(request)
        if rule.kind == "invalid_client":
            return _oauth_error(rule.status or 401, "invalid_client")
        if rule.kind == "invalid_grant":
            return _oauth_error(rule.status or 400, "invalid_grant")
        response = _oauth_error(rule.status or 500, "server_error")
        if rule.retry_after is not None:
            response.headers["Retry-After"] = rule.retry_after
        return response

    def _refresh_grant(self, request: web.Request, form: dict[str, str]) -> web.Response:
        token = form.get("refresh_token", "")
        grant = self._refresh.get(token)
        if grant is None or grant.expires_at <= self.clock():
            self._refresh.pop(token, None)
            return _oauth_error(400, "invalid_grant")
        return self._token_response(request, self.issue_tokens(grant.realm_id), grant.realm_id)

    def _code_grant(self, request: web.Request, form: dict[str, str]) -> web.Response:
        code = self._codes.pop(form.get("code", ""), None)
        if code is None or code.expires_at <= self.clock():
            return _oauth_error(400, "invalid_grant")
        if form.get("redirect_uri") != code.redirect_uri or code.client_id != self.client_id:
            return _oauth_error(400, "invalid_grant")
        if code.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            if code.code_challenge_method == "S256":
                digest = hashlib.sha256(verifier.encode()).digest()
                expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            else:
                expected = verifier
            if not verifier or not secrets.compare_digest(expected, code.code_challenge):
                return _oauth_error(400, "invalid_grant")
        return self._token_response(request, self.issue_tokens(code.realm_id), code.realm_id)

    def _token_response(self, request: web.Request, pair: TokenPair, realm_id: str) -> web.Response:
        now = self.clock()
        body: JSONDict = {
            "access_token": pair.access_token,
            "token_type": "bearer",
            "expires_in": round(pair.access_expires_at - now),
            "refresh_token": pair.refresh_token,
            "x_refresh_token_expires_in": round(pair.refresh_expires_at - now),
        }
        if request.headers.get("x-include-refresh-token-hard-expires-in", "").lower() == "true":
            hard = self._realms[realm_id].connected_at + self.hard_ttl
            body["x_refresh_token_hard_expires_in"] = round(hard - now)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        if q.get("client_id") != self.client_id:
            return web.Response(status=400, text="invalid client_id")
        if q.get("response_type") != "code" or not q.get("redirect_uri"):
            return web.Response(status=400, text="response_type=code and redirect_uri required")
        method = q.get("code_challenge_method", "plain")
        if q.get("code_challenge") and method not in ("S256", "plain"):
            return web.Response(status=400, text="unsupported code_challenge_method")
        realm_id = q.get("realm_id") or None
        if realm_id is None or realm_id not in self._realms:
            realm_id = realm_id or str(secrets.randbelow(9 * 10**15) + 10**15)
            self._realms[realm_id] = self._seed(realm_id)
        code = "AB11" + secrets.token_urlsafe(24)
        self._codes[code] = _AuthCode(
            realm_id=realm_id,
            client_id=self.client_id,
            redirect_uri=q["redirect_uri"],
            code_challenge=q.get("code_challenge") or None,
            code_challenge_method=method,
            expires_at=self.clock() + AUTH_CODE_TTL,
        )
        params = {"code": code, "realmId": realm_id}
        if "state" in q:
            params["state"] = q["state"]
        raise web.HTTPFound(_add_query(q["redirect_uri"], params))

    async def _revoke(self, request: web.Request) -> web.StreamResponse:
        if not self._basic_ok(request):
            return _oauth_error(401, "invalid_client")
        try:
            token = (await request.json()).get("token", "")
        except (ValueError, AttributeError):
            return _oauth_error(400, "invalid_request")
        grant = self._refresh.get(token) or self._access.get(token)
        if grant is not None:
            self.revoke_realm(grant.realm_id)
        return web.Response(status=200)

    # ---- Accounting API ------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        realm_id = request.match_info["realm"]
        tail = request.match_info["tail"]
        tid = f"1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}"
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        realm_now = self.in_flight_by_realm.get(realm_id, 0) + 1
        self.in_flight_by_realm[realm_id] = realm_now
        self.max_in_flight_by_realm[realm_id] = max(
            self.max_in_flight_by_realm.get(realm_id, 0), realm_now
        )
        try:
            recorded = await self._record(request)
            self.api_requests.append(recorded)
            self.api_request_count += 1
            keep = self.keep_requests
            if keep is not None and len(self.api_requests) > 2 * keep:
                del self.api_requests[:-keep]
            if self._over_limit(realm_id, realm_now):
                self.throttled += 1
                return self._api_fault(request, FaultRule("throttle"), tid)
            delay, rule = self._take_faults("api", request.method, realm_id, tail)
            await asyncio.sleep(self.latency + delay)
            if rule is not None and not (rule.kind == "disconnect" and rule.after):
                return self._api_fault(request, rule, tid)
            auth_fault = self._check_bearer(request, realm_id)
            if auth_fault is not None:
                response: web.StreamResponse = _unauthorized(self.clock())
            else:
                response = await self._dispatch(request, recorded, realm_id, tail)
            if rule is not None:
                return _drop(request)
            response.headers["intuit_tid"] = tid
            return response
        finally:
            self.in_flight -= 1
            self.in_flight_by_realm[realm_id] -= 1

    def _over_limit(self, realm_id: str, realm_in_flight: int) -> bool:
        if self.concurrency_limit is not None and realm_in_flight > self.concurrency_limit:
            return True
        if self.rate_limit_per_minute is None:
            return False
        now = self.clock()
        window = self._admitted_at.setdefault(realm_id, deque())
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= self.rate_limit_per_minute:
            return True
        window.append(now)
        return False

    def _check_bearer(self, request: web.Request, realm_id: str) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return "missing bearer"
        grant = self._access.get(token.strip())
        if grant is None or realm_id not in self._realms:
            return "unknown token"
        if grant.realm_id != realm_id:
            return "token for another realm"
        if grant.expires_at <= self.clock():
            return "expired"
        return None

    def _api_fault(self, request: web.Request, rule: FaultRule, tid: str) -> web.Response:
        now = self.clock()
        kind = rule.kind
        if kind == "disconnect":
            return _drop(request)
        if kind == "unauthorized":
            response = _unauthorized(now)
        elif kind == "throttle":
            status = rule.status or 429
            message = f"message=ThrottleExceeded; errorCode=003001; statusCode={status}"
            detail = "The request limit was reached."
            if rule.xml:
                response = web.Response(
                    status=status,
                    text=_xml_fault("3001", message, detail, now),
                    content_type="application/xml",
                )
            else:
                response = _fault(status, "3001", message, detail, "ThrottleExceeded", now)
        elif kind == "server_error":
            response = _fault(
                rule.status or 500,
                "10000",
                "An application error has occurred while processing your request",
                "System Failure Error: An unexpected error occurred while accessing or saving "
                "your data. Please wait a few minutes and try again.",
                "SystemFault",
                now,
            )
        elif kind == "server_error_html":
            status = rule.status or 502
            reason = {502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Error")
            response = web.Response(
                status=status,
                text=f"<html><head><title>{status} {reason}</title></head>"
                f"<body><h1>{status} {reason}</h1></body></html>",
                content_type="text/html",
            )
        elif kind == "gateway_timeout":
            response = _fault(
                rule.status or 504,
                "6002",
                "message=Gateway Timeout; errorCode=006002; statusCode=504",
                "The request timed out.",
                "SystemFault",
                now,
            )
        elif kind == "forbidden":
            response = _fault(
                rule.status or 403,
                "3100",
                "message=ApplicationAuthorizationFailed; errorCode=003100; statusCode=403",
                "",
                "SECURITY",
                now,
            )
        else:  # fault_in_200
            response = _fault(
                rule.status or 200,
                "6000",
                "A business validation error has occurred while processing your request",
                "Business Validation Error: simulated.",
                "ValidationFault",
                now,
            )
        if rule.retry_after is not None:
            response.headers["Retry-After"] = rule.retry_after
        response.headers["intuit_tid"] = tid
        return response

    async def _dispatch(
        self, request: web.Request, recorded: RecordedRequest, realm_id: str, tail: str
    ) -> web.StreamResponse:
        realm = self._realms[realm_id]
        now = self.clock()
        parts = tail.split("/")
        method = request.method
        try:
            if parts[0] == "companyinfo" and len(parts) == 2 and method == "GET":
                if parts[1] != realm_id:
                    raise _not_found(now)
                return _json(200, {"CompanyInfo": _company(realm_id), "time": _iso(now)})
            if parts == ["query"] and method in ("GET", "POST"):
                text = (
                    request.query.get("query", "")
                    if method == "GET"
                    else recorded.body.decode("utf-8", "replace")
                )
                return _json(200, {"QueryResponse": _query(realm, text, now), "time": _iso(now)})
            if parts[0] in ENTITY_PATHS and len(parts) == 2 and method == "GET":
                found = realm.entities[ENTITY_PATHS[parts[0]]].get(parts[1])
                if found is None:
                    raise _not_found(now)
                return _json(200, {ENTITY_PATHS[parts[0]]: found, "time": _iso(now)})
            if parts[0] == "reports" and len(parts) == 2 and method == "GET":
                return await _report(request, parts[1], now)
            if parts[0] == "cdc" and method == "GET":
                return _json(200, {"CDCResponse": [{"QueryResponse": []}], "time": _iso(now)})
            writes = len(parts) == 1 and method == "POST"
            if writes and (parts[0] in ENTITY_PATHS or parts[0] == "batch"):
                return self._idempotent(realm, request, recorded.body, parts[0], now)
        except _FaultAnswer as answer:
            return _json(answer.status, answer.body)
        if recorded.body:
            return _json(
                200,
                {
                    "received_bytes": len(recorded.body),
                    "sha256": hashlib.sha256(recorded.body).hexdigest(),
                },
            )
        return _json(
            400,
            _fault_body("4000", "Unsupported Operation", f"No handler for {method} {tail}", now),
        )

    def _idempotent(
        self, realm: _Realm, request: web.Request, body: bytes, what: str, now: float
    ) -> web.Response:
        request_id = request.query.get("requestid")
        if request_id is not None and request_id in realm.idempotent:
            status, raw = realm.idempotent[request_id]
            return web.Response(status=status, body=raw, content_type="application/json")
        try:
            payload = json.loads(body or b"null")
            if what == "batch":
                status, answer = 200, self._batch(realm, payload, now)
            else:
                entity = ENTITY_PATHS[what]
                status, answer = 200, {entity: _write(realm, entity, payload, now)}
        except _FaultAnswer as fault:
            status, answer = fault.status, fault.body
        except ValueError:
            status = 400
            answer = _fault_body("2500", "Invalid Request", "Request body is not JSON", now)
        answer["time"] = _iso(now)
        raw = json.dumps(answer).encode()
        if request_id is not None:
            realm.idempotent[request_id] = (status, raw)
        return web.Response(status=status, body=raw, content_type="application/json")

    def _batch(self, realm: _Realm, payload: Any, now: float) -> JSONDict:
        items = payload.get("BatchItemRequest") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise _FaultAnswer(400, _fault_body("2500", "Invalid Request", "No items", now))
        if len(items) > BATCH_MAX_ITEMS:
            raise _FaultAnswer(
                400,
                _fault_body(
                    "6000",
                    "A business validation error has occurred while processing your request",
                    f"Number of items in a batch exceeds the limit of {BATCH_MAX_ITEMS}",
                    now,
                ),
            )
        answers: list[JSONDict] = []
        for item in items:
            item = item if isinstance(item, dict) else {}
            answer: JSONDict = {"bId": item.get("bId")}
            try:
                if "Query" in item:
                    answer["QueryResponse"] = _query(realm, str(item["Query"]), now)
                else:
                    entity = next((e for e in ("Customer", "Invoice") if e in item), None)
                    operation = item.get("operation", "create")
                    if entity is None or operation not in ("create", "update"):
                        raise _FaultAnswer(
                            400, _fault_body("2500", "Invalid Request", "Unsupported item", now)
                        )
                    data = dict(item[entity])
                    if operation == "create":
                        data.pop("Id", None)
                    answer[entity] = _write(realm, entity, data, now)
            except _FaultAnswer as fault:
                answer["Fault"] = fault.body["Fault"]
            answers.append(answer)
        return {"BatchItemResponse": answers}

    # ---- control routes ------------------------------------------------------------------

    async def _ctl_realms(self, request: web.Request) -> web.StreamResponse:
        data = await _json_body(request)
        pair = self.add_realm(str(data["realm_id"]) if data.get("realm_id") else None)
        realm_id = self._refresh[pair.refresh_token].realm_id
        return web.json_response({"realm_id": realm_id, **asdict(pair)})

    async def _ctl_expire(self, request: web.Request) -> web.StreamResponse:
        self.expire_access_token(request.match_info["realm"])
        return web.json_response({"ok": True})

    async def _ctl_add_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            rule = FaultRule.from_json(await _json_body(request))
        except (ValueError, TypeError, re.error) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.inject(rule)
        return web.json_response(rule.to_json(), status=201)

    async def _ctl_clear_faults(self, request: web.Request) -> web.StreamResponse:
        self.clear_faults()
        return web.json_response({"ok": True})

    async def _ctl_latency(self, request: web.Request) -> web.StreamResponse:
        data = await _json_body(request)
        try:
            api = float(data.get("api", self.latency))
            token = float(data.get("token", self.token_latency))
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text="latency values are seconds") from exc
        self.latency, self.token_latency = api, token
        return web.json_response({"api": self.latency, "token": self.token_latency})

    async def _ctl_limits(self, request: web.Request) -> web.StreamResponse:
        data = await _json_body(request)
        try:
            concurrency = _opt_int(data.get("concurrency", self.concurrency_limit))
            per_minute = _opt_int(data.get("per_minute", self.rate_limit_per_minute))
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text="limits are integers or null") from exc
        self.concurrency_limit, self.rate_limit_per_minute = concurrency, per_minute
        return web.json_response(
            {"concurrency": self.concurrency_limit, "per_minute": self.rate_limit_per_minute}
        )

    async def _ctl_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())

    async def _ctl_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset_stats()
        self.clear_faults()
        return web.json_response({"ok": True})


SIMULATOR_KEY = web.AppKey("qbo_simulator", Simulator)


# ---- helpers ---------------------------------------------------------------------------


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds")


def _json(status: int, body: JSONDict) -> web.Response:
    return web.json_response(body, status=status)


def _oauth_error(status: int, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status)


def _fault_body(
    code: str, message: str, detail: str, now: float, kind: str = "ValidationFault"
) -> JSONDict:
    return {
        "Fault": {
            "Error": [{"Message": message, "Detail": detail, "code": code, "element": ""}],
            "type": kind,
        },
        "time": _iso(now),
    }


def _fault(
    status: int, code: str, message: str, detail: str, kind: str, now: float
) -> web.Response:
    return _json(status, _fault_body(code, message, detail, now, kind))


def _not_found(now: float) -> _FaultAnswer:
    return _FaultAnswer(
        400,
        _fault_body(
            "610",
            "Object Not Found",
            "Object Not Found : Something you're trying to use has been made inactive. "
            "Check the fields with accounts, customers, items, vendors or employees.",
            now,
        ),
    )


def _unauthorized(now: float) -> web.Response:
    body: JSONDict = {
        "warnings": None,
        "intuitObject": None,
        "fault": {
            "error": [
                {
                    "message": "message=AuthenticationFailed; errorCode=003200; statusCode=401",
                    "detail": "Token expired or invalid",
                    "code": "3200",
                    "element": None,
                }
            ],
            "type": "AUTHENTICATION",
        },
        "report": None,
        "queryResponse": None,
        "batchItemResponse": [],
        "attachableResponse": [],
        "syncErrorResponse": None,
        "requestId": None,
        "time": int(now * 1000),
        "status": None,
        "cdcresponse": [],
    }
    return web.json_response(
        body, status=401, headers={"WWW-Authenticate": 'Bearer realm="Intuit"'}
    )


def _xml_fault(code: str, message: str, detail: str, now: float) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f'<IntuitResponse xmlns="http://schema.intuit.com/finance/v3" time="{_iso(now)}">'
        f'<Fault type="ServiceFault"><Error code="{code}"><Message>{message}</Message>'
        f"<Detail>{detail}</Detail></Error></Fault></IntuitResponse>"
    )


def _company(realm_id: str) -> JSONDict:
    return {
        "Id": "1",
        "SyncToken": "0",
        "CompanyName": f"Sandbox Company {realm_id}",
        "LegalName": f"Sandbox Company {realm_id}",
        "Country": "US",
        "domain": "QBO",
        "sparse": False,
    }


def _query(realm: _Realm, text: str, now: float) -> JSONDict:
    match = QUERY_RE.match(text)
    canonical = {name.lower(): name for name in realm.entities}
    if match is None or match["entity"].lower() not in canonical:
        raise _FaultAnswer(
            400,
            _fault_body(
                "4000",
                "Error parsing query",
                f"QueryParserError: Encountered unsupported query: {text[:200]}",
                now,
            ),
        )
    entity = canonical[match["entity"].lower()]
    rows = list(realm.entities[entity].values())
    if match["field"]:
        wanted_field = match["field"].lower()
        rows = [
            row
            for row in rows
            if any(k.lower() == wanted_field and str(v) == match["value"] for k, v in row.items())
        ]
    if match["what"] != "*":
        return {"totalCount": len(rows)}
    start = max(1, int(match["start"] or 1))
    limit = min(QUERY_MAX, int(match["max"] or QUERY_DEFAULT_MAX))
    page = rows[start - 1 : start - 1 + limit]
    if not page:
        return {}
    return {entity: page, "startPosition": start, "maxResults": len(page), "totalCount": len(rows)}


def _write(realm: _Realm, entity: str, payload: Any, now: float) -> JSONDict:
    """Create (no Id) or update (Id + current SyncToken) one entity."""
    if not isinstance(payload, dict):
        raise _FaultAnswer(400, _fault_body("2500", "Invalid Request", "Expected an object", now))
    store = realm.entities[entity]
    stamp = _iso(now)
    entity_id = payload.get("Id")
    if entity_id is None:
        new_id = str(realm.next_id[entity])
        realm.next_id[entity] += 1
        created: JSONDict = {
            **payload,
            "Id": new_id,
            "SyncToken": "0",
            "domain": "QBO",
            "sparse": False,
            "MetaData": {"CreateTime": stamp, "LastUpdatedTime": stamp},
        }
        store[new_id] = created
        return created
    current = store.get(str(entity_id))
    if current is None:
        raise _not_found(now)
    if str(payload.get("SyncToken")) != current["SyncToken"]:
        raise _FaultAnswer(
            400,
            _fault_body(
                "5010",
                "Stale Object Error",
                f"Stale Object Error : You and root were working on this at the same time. "
                f"root finished before you did, so your work was not saved. "
                f"Id={entity_id} SyncToken={current['SyncToken']}",
                now,
            ),
        )
    base = dict(current) if payload.get("sparse") else {}
    updated: JSONDict = {
        **base,
        **payload,
        "Id": current["Id"],
        "SyncToken": str(int(current["SyncToken"]) + 1),
        "domain": "QBO",
        "sparse": False,
        "MetaData": {"CreateTime": current["MetaData"]["CreateTime"], "LastUpdatedTime": stamp},
    }
    store[current["Id"]] = updated
    return updated


async def _report(request: web.Request, name: str, now: float) -> web.StreamResponse:
    header = {
        "Time": _iso(now),
        "ReportName": name,
        "StartPeriod": "2026-01-01",
        "EndPeriod": "2026-12-31",
        "Currency": "USD",
    }
    row = '{"ColData":[{"value":"Services","id":"1"},{"value":"1234.56"}],"type":"Data"}'
    try:
        size = int(request.query.get("sim_size", "0"))
    except ValueError:
        size = 0
    prefix = json.dumps(
        {
            "Header": header,
            "Columns": {"Column": [{"ColTitle": "", "ColType": "Account"}]},
        }
    )[:-1]
    # Rows are repeated text, not built objects, so a 50 MB report costs no JSON encoding.
    count = max(1, (size - len(prefix) - 40) // (len(row) + 1)) if size else 3
    body = (prefix + ',"Rows":{"Row":[' + ",".join([row] * count) + "]}}").encode()
    if len(body) <= STREAM_THRESHOLD:
        return web.Response(body=body, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    view = memoryview(body)
    for offset in range(0, len(body), STREAM_CHUNK):
        await response.write(view[offset : offset + STREAM_CHUNK])
    await response.write_eof()
    return response


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


async def _json_body(request: web.Request) -> JSONDict:
    if not request.body_exists:
        return {}
    try:
        data = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text="body must be JSON") from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return data


def _drop(request: web.Request) -> web.Response:
    """Close the connection so the client gets no response at all.

    The returned response is never delivered: aiohttp drops writes to an aborted transport.
    """
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=204)


def _add_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit(parts._replace(query=query))


# ---- process entry -----------------------------------------------------------------------


def run(
    host: str,
    port: int,
    *,
    realm_id: str | None = None,
    print_tokens: bool = False,
    client_id: str = SIM_CLIENT_ID,
    client_secret: str = SIM_CLIENT_SECRET,
) -> None:
    """Serve a simulator with one seeded realm until SIGINT/SIGTERM (blocking)."""
    sim = Simulator(client_id=client_id, client_secret=client_secret)
    pair = sim.add_realm(realm_id or DEFAULT_REALM_ID)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(sim, host, port, realm_id or DEFAULT_REALM_ID, pair, print_tokens))


async def _serve(
    sim: Simulator, host: str, port: int, realm_id: str, pair: TokenPair, print_tokens: bool
) -> None:
    runner = web.AppRunner(sim.make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"qbo simulator listening on http://{host}:{bound} realm={realm_id}", flush=True)
    if print_tokens:
        line = {"realm_id": realm_id, **asdict(pair)}
        print(json.dumps(line), flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
