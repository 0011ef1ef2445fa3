"""The QBO simulator behaves like Intuit over real sockets: OAuth, the API, every fault kind."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from qbo_gateway.simulator import (
    SIMULATOR_KEY,
    FaultRule,
    RecordedRequest,
    Simulator,
    TokenPair,
)

REALM = "9130349226472226"
OTHER = "4620816365212345678"
BASIC = "Basic " + base64.b64encode(b"sim-client:sim-secret").decode()
TOKEN_PATH = "/oauth2/v1/tokens/bearer"
ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def sim(clock: FakeTime) -> Simulator:
    return Simulator(clock=clock)


@pytest.fixture
async def client(sim: Simulator, aiohttp_client: ClientFactory) -> Client:
    return await aiohttp_client(sim.make_app())


def bearer(pair: TokenPair) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair.access_token}", "Accept": "application/json"}


async def refresh(client: Client, token: str, **headers: str) -> aiohttp.ClientResponse:
    return await client.post(
        TOKEN_PATH,
        data={"grant_type": "refresh_token", "refresh_token": token},
        headers={"Authorization": BASIC, **headers},
    )


async def api(client: Client, pair: TokenPair, path: str, **kw: Any) -> aiohttp.ClientResponse:
    method = kw.pop("method", "GET")
    headers = {**bearer(pair), **kw.pop("headers", {})}
    return await client.request(method, f"/v3/company/{REALM}/{path}", headers=headers, **kw)


# ---- OAuth -------------------------------------------------------------------------------


async def test_refresh_rotates_and_old_refresh_token_dies(sim: Simulator, client: Client) -> None:
    first = sim.add_realm(REALM)
    resp = await refresh(client, first.refresh_token)
    assert resp.status == 200
    body = await resp.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["x_refresh_token_expires_in"] == 101 * 86400
    assert "x_refresh_token_hard_expires_in" not in body
    assert body["refresh_token"] != first.refresh_token

    again = await refresh(client, first.refresh_token)
    assert again.status == 400
    assert await again.json() == {"error": "invalid_grant"}

    newest = await refresh(
        client, body["refresh_token"], **{"x-include-refresh-token-hard-expires-in": "true"}
    )
    assert newest.status == 200
    assert (await newest.json())["x_refresh_token_hard_expires_in"] == 5 * 365 * 86400
    assert sim.token_calls == 3
    assert len(sim.token_requests) == 3
    assert (
        sim.token_requests[0]
        .headers["Content-Type"]
        .startswith("application/x-www-form-urlencoded")
    )

    pair = TokenPair(body["access_token"], body["refresh_token"], 0.0, 0.0)
    assert (await api(client, pair, f"companyinfo/{REALM}")).status == 200


async def test_issue_tokens_kills_previous_refresh_token(sim: Simulator, client: Client) -> None:
    first = sim.add_realm(REALM)
    second = sim.issue_tokens(REALM)
    assert (await refresh(client, first.refresh_token)).status == 400
    assert (await refresh(client, second.refresh_token)).status == 200


async def test_invalid_client_does_not_consume_the_refresh_token(
    sim: Simulator, client: Client
) -> None:
    pair = sim.add_realm(REALM)
    wrong = "Basic " + base64.b64encode(b"sim-client:nope").decode()
    for headers in ({"Authorization": wrong}, {}, {"Authorization": "Basic !!"}):
        resp = await client.post(
            TOKEN_PATH,
            data={"grant_type": "refresh_token", "refresh_token": pair.refresh_token},
            headers=headers,
        )
        assert resp.status == 401
        assert await resp.json() == {"error": "invalid_client"}
    assert sim.token_calls == 3
    assert (await refresh(client, pair.refresh_token)).status == 200


async def test_refresh_and_access_tokens_expire_on_the_injected_clock(
    sim: Simulator, client: Client, clock: FakeTime
) -> None:
    pair = sim.add_realm(REALM)
    clock.now += 3599
    assert (await api(client, pair, "customer/1")).status == 200
    clock.now += 2
    expired = await api(client, pair, "customer/1")
    assert expired.status == 401
    assert (await expired.json())["fault"]["error"][0]["code"] == "3200"
    clock.now += 101 * 86400
    assert (await refresh(client, pair.refresh_token)).status == 400


async def test_refresh_token_lifetime_is_capped_by_hard_expiry(clock: FakeTime) -> None:
    sim = Simulator(clock=clock, hard_ttl=10 * 86400.0)
    pair = sim.add_realm(REALM)
    assert pair.refresh_expires_at == clock.now + 10 * 86400


async def test_authorization_code_with_pkce(sim: Simulator, client: Client) -> None:
    verifier = "v" * 50
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )

    async def authorize(realm: str | None = None) -> dict[str, list[str]]:
        params = {
            "client_id": "sim-client",
            "redirect_uri": "http://app.example/cb",
            "state": "st8",
            "response_type": "code",
            "scope": "com.intuit.quickbooks.accounting",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if realm:
            params["realm_id"] = realm
        resp = await client.get("/connect/oauth2", params=params, allow_redirects=False)
        assert resp.status == 302
        location = urlsplit(resp.headers["Location"])
        assert location.netloc == "app.example" and location.path == "/cb"
        return parse_qs(location.query)

    def exchange(code: str, verifier: str | None) -> Awaitable[aiohttp.ClientResponse]:
        form = {"grant_type": "authorization_code", "code": code}
        form["redirect_uri"] = "http://app.example/cb"
        if verifier is not None:
            form["code_verifier"] = verifier
        return client.post(TOKEN_PATH, data=form, headers={"Authorization": BASIC})

    q = await authorize(REALM)
    assert q["state"] == ["st8"] and q["realmId"] == [REALM]
    assert (await exchange(q["code"][0], "wrong-verifier")).status == 400

    q = await authorize(REALM)
    assert (await exchange(q["code"][0], None)).status == 400

    q = await authorize()
    new_realm = q["realmId"][0]
    assert new_realm != REALM and new_realm.isdigit()
    ok = await exchange(q["code"][0], verifier)
    assert ok.status == 200
    tokens = await ok.json()
    resp = await client.get(
        f"/v3/company/{new_realm}/companyinfo/{new_realm}",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert resp.status == 200
    reused = await exchange(q["code"][0], verifier)
    assert await reused.json() == {"error": "invalid_grant"}
    assert sim.token_calls == 0


async def test_revoke_kills_the_grant(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    unauth = await client.post("/v2/oauth2/tokens/revoke", json={"token": pair.refresh_token})
    assert unauth.status == 401
    resp = await client.post(
        "/v2/oauth2/tokens/revoke",
        json={"token": pair.refresh_token},
        headers={"Authorization": BASIC},
    )
    assert resp.status == 200
    assert (await refresh(client, pair.refresh_token)).status == 400
    assert (await api(client, pair, "customer/1")).status == 401


# ---- Accounting API ----------------------------------------------------------------------


async def test_api_auth_and_intuit_tid(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    other = sim.add_realm(OTHER)
    ok1 = await api(client, pair, "customer/1", params={"minorversion": "75"})
    ok2 = await api(client, pair, "customer/1")
    assert ok1.status == ok2.status == 200
    assert (await ok1.json())["Customer"]["Id"] == "1"
    assert ok1.headers["intuit_tid"] != ok2.headers["intuit_tid"]
    assert sim.api_requests[0].query == {"minorversion": "75"}

    no_auth = await client.get(f"/v3/company/{REALM}/customer/1")
    assert no_auth.status == 401
    body = await no_auth.json()
    assert body["fault"]["type"] == "AUTHENTICATION"
    assert body["fault"]["error"][0]["code"] == "3200"
    assert "intuit_tid" in no_auth.headers

    cross = await client.get(f"/v3/company/{REALM}/customer/1", headers=bearer(other))
    assert cross.status == 401
    unknown = await client.get("/v3/company/555/customer/1", headers=bearer(pair))
    assert unknown.status == 401

    sim.expire_access_token(REALM)
    assert (await api(client, pair, "customer/1")).status == 401
    assert (await client.get(f"/v3/company/{OTHER}/customer/1", headers=bearer(other))).ok
    assert len(sim.api_requests) == 7


async def test_reads_and_not_found(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    info = await (await api(client, pair, f"companyinfo/{REALM}")).json()
    assert REALM in info["CompanyInfo"]["CompanyName"]
    invoice = await (await api(client, pair, "invoice/7")).json()
    assert invoice["Invoice"]["CustomerRef"]["value"] == "7"
    missing = await api(client, pair, "customer/999")
    assert missing.status == 400
    assert (await missing.json())["Fault"]["Error"][0]["code"] == "610"


async def test_query_paging_get_and_post(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    resp = await api(
        client,
        pair,
        "query",
        params={"query": "select * from Customer STARTPOSITION 11 MAXRESULTS 10"},
    )
    page = (await resp.json())["QueryResponse"]
    assert [c["Id"] for c in page["Customer"]] == [str(n) for n in range(11, 21)]
    assert page["startPosition"] == 11 and page["maxResults"] == 10
    assert page["totalCount"] == 25

    resp = await api(
        client,
        pair,
        "query",
        method="POST",
        data=b"SELECT * FROM invoice startposition 21 maxresults 10",
        headers={**bearer(pair), "Content-Type": "application/text"},
    )
    page = (await resp.json())["QueryResponse"]
    assert [i["Id"] for i in page["Invoice"]] == ["21", "22", "23", "24", "25"]

    one = await api(
        client, pair, "query", params={"query": "select * from Customer where Id = '3'"}
    )
    assert [c["Id"] for c in (await one.json())["QueryResponse"]["Customer"]] == ["3"]
    past = await api(
        client, pair, "query", params={"query": "select * from Customer startposition 90"}
    )
    assert (await past.json())["QueryResponse"] == {}
    bad = await api(client, pair, "query", params={"query": "delete everything"})
    assert bad.status == 400
    assert (await bad.json())["Fault"]["Error"][0]["code"] == "4000"


async def test_requestid_makes_a_create_idempotent(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    payload = {"DisplayName": "New Co"}
    first = await api(
        client, pair, "customer", method="POST", json=payload, params={"requestid": "r1"}
    )
    again = await api(
        client, pair, "customer", method="POST", json=payload, params={"requestid": "r1"}
    )
    assert first.status == again.status == 200
    assert await first.read() == await again.read()
    created = (await first.json())["Customer"]
    assert created["Id"] == "26" and created["SyncToken"] == "0"
    assert created["DisplayName"] == "New Co"
    fresh = await api(
        client, pair, "customer", method="POST", json=payload, params={"requestid": "r2"}
    )
    assert (await fresh.json())["Customer"]["Id"] == "27"
    assert sim.entity(REALM, "Customer", "28") is None

    stale = await api(
        client, pair, "customer", method="POST", json={"Id": "1", "SyncToken": "5", "sparse": True}
    )
    assert (await stale.json())["Fault"]["Error"][0]["code"] == "5010"
    update = await api(
        client,
        pair,
        "customer",
        method="POST",
        json={"Id": "1", "SyncToken": "0", "sparse": True, "DisplayName": "Renamed"},
    )
    updated = (await update.json())["Customer"]
    assert updated["SyncToken"] == "1" and updated["CompanyName"] == "Company 1 Ltd"


async def test_batch(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    items = [
        {"bId": "a", "operation": "create", "Invoice": {"CustomerRef": {"value": "1"}}},
        {"bId": "b", "Query": "select * from Customer maxresults 2"},
        {"bId": "c", "operation": "update", "Customer": {"Id": "404", "SyncToken": "0"}},
    ]
    resp = await api(client, pair, "batch", method="POST", json={"BatchItemRequest": items})
    answers = {a["bId"]: a for a in (await resp.json())["BatchItemResponse"]}
    assert answers["a"]["Invoice"]["Id"] == "26"
    assert len(answers["b"]["QueryResponse"]["Customer"]) == 2
    assert answers["c"]["Fault"]["Error"][0]["code"] == "610"

    too_many = [{"bId": str(n), "Query": "select * from Customer"} for n in range(31)]
    refused = await api(client, pair, "batch", method="POST", json={"BatchItemRequest": too_many})
    assert refused.status == 400


async def test_large_request_body_arrives_byte_identical(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    blob = os.urandom(3 * 1024 * 1024)
    resp = await api(client, pair, "upload", method="POST", data=blob)
    body = await resp.json()
    assert body == {"received_bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    assert sim.api_requests[-1].body == blob


async def test_large_report_is_streamed_chunked(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    resp = await api(client, pair, "reports/ProfitAndLoss", params={"sim_size": "2000000"})
    assert resp.status == 200
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    raw = await resp.read()
    assert 1_900_000 < len(raw) <= 2_000_000
    assert json.loads(raw)["Header"]["ReportName"] == "ProfitAndLoss"
    small = await api(client, pair, "reports/BalanceSheet")
    assert len((await small.json())["Rows"]["Row"]) == 3


async def test_in_flight_counting(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    other = sim.add_realm(OTHER)
    sim.latency = 0.2
    calls = [api(client, pair, "customer/1") for _ in range(4)]
    calls.append(client.get(f"/v3/company/{OTHER}/customer/1", headers=bearer(other)))
    results = await asyncio.gather(*calls)
    assert all(r.status == 200 for r in results)
    assert sim.max_in_flight == 5
    assert sim.max_in_flight_by_realm == {REALM: 4, OTHER: 1}
    assert sim.in_flight == 0
    sim.reset_stats()
    assert sim.max_in_flight == 0 and sim.api_requests == []


async def test_optional_intuit_limits_throttle(
    sim: Simulator, client: Client, clock: FakeTime
) -> None:
    pair = sim.add_realm(REALM)
    sim.concurrency_limit = 2
    sim.latency = 0.2
    results = await asyncio.gather(*(api(client, pair, "customer/1") for _ in range(4)))
    assert sorted(r.status for r in results) == [200, 200, 429, 429]
    assert sim.throttled == 2
    sim.latency = 0.0
    sim.concurrency_limit = None
    sim.rate_limit_per_minute = 3
    statuses = [(await api(client, pair, "customer/1")).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    clock.now += 61
    assert (await api(client, pair, "customer/1")).status == 200


async def test_keep_requests_bounds_memory_but_not_the_count(
    clock: FakeTime, aiohttp_client: ClientFactory
) -> None:
    sim = Simulator(clock=clock, keep_requests=2)
    client = await aiohttp_client(sim.make_app())
    pair = sim.add_realm(REALM)
    for n in range(1, 8):
        await api(client, pair, f"customer/{n}")
    assert 2 <= len(sim.api_requests) <= 4
    assert sim.api_requests[-1].path.endswith("/customer/7")
    assert sim.stats()["api_requests"] == 7


# ---- faults ------------------------------------------------------------------------------

API_FAULTS: list[tuple[dict[str, Any], int, str | None]] = [
    ({"kind": "throttle"}, 429, "3001"),
    ({"kind": "throttle", "status": 403}, 403, "3001"),
    ({"kind": "server_error"}, 500, "10000"),
    ({"kind": "gateway_timeout"}, 504, "6002"),
    ({"kind": "forbidden"}, 403, "3100"),
    ({"kind": "fault_in_200"}, 200, "6000"),
    ({"kind": "unauthorized"}, 401, "3200"),
]


@pytest.mark.parametrize(("rule", "status", "code"), API_FAULTS)
async def test_api_fault_kinds(
    sim: Simulator, client: Client, rule: dict[str, Any], status: int, code: str
) -> None:
    pair = sim.add_realm(REALM)
    sim.inject(FaultRule(**rule, times=1, path="^customer/"))
    assert (await api(client, pair, "invoice/1")).status == 200
    resp = await api(client, pair, "customer/1")
    assert resp.status == status
    assert "intuit_tid" in resp.headers
    body = await resp.json()
    errors = body["fault"]["error"] if "fault" in body else body["Fault"]["Error"]
    assert errors[0]["code"] == code
    assert (await api(client, pair, "customer/1")).status == 200
    assert sim.faults == []


async def test_throttle_xml_and_retry_after_and_html_5xx(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    sim.inject(FaultRule("throttle", xml=True, retry_after="7", times=1))
    resp = await api(client, pair, "customer/1")
    assert resp.status == 429 and resp.headers["Retry-After"] == "7"
    assert resp.content_type == "application/xml"
    assert '<Error code="3001">' in await resp.text()

    sim.inject(FaultRule("server_error_html", status=503, times=1, method="GET"))
    html = await api(client, pair, "customer/1")
    assert html.status == 503 and html.content_type == "text/html"
    assert "<html>" in await html.text()
    sim.inject(FaultRule("server_error_html", times=1))
    assert (await api(client, pair, "customer/1")).status == 502


async def test_fault_matching_by_realm_and_method_and_clear(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    other = sim.add_realm(OTHER)
    sim.inject(FaultRule("throttle", realm_id=OTHER))
    sim.inject(FaultRule("server_error", method="POST"))
    assert (await api(client, pair, "customer/1")).status == 200
    throttled = await client.get(f"/v3/company/{OTHER}/customer/1", headers=bearer(other))
    assert throttled.status == 429
    created = await api(client, pair, "customer", method="POST", json={"DisplayName": "x"})
    assert created.status == 500
    sim.clear_faults()
    assert (await client.get(f"/v3/company/{OTHER}/customer/1", headers=bearer(other))).ok


async def test_disconnect_before_and_after_processing(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    sim.inject(FaultRule("disconnect", times=1))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api(client, pair, "customer", method="POST", json={"DisplayName": "lost"})
    assert sim.entity(REALM, "Customer", "26") is None

    sim.inject(FaultRule("disconnect", times=1, after=True))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api(client, pair, "customer", method="POST", json={"DisplayName": "written"})
    stored = sim.entity(REALM, "Customer", "26")
    assert stored is not None and stored["DisplayName"] == "written"
    assert sim.in_flight == 0


async def test_delay_fault_holds_only_matching_requests(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    sim.inject(FaultRule("delay", delay=0.3, path="^companyinfo", times=1))
    slow = asyncio.ensure_future(api(client, pair, f"companyinfo/{REALM}"))
    while not sim.api_requests:
        await asyncio.sleep(0.005)
    assert (await api(client, pair, "customer/1")).status == 200
    assert sim.in_flight == 1 and not slow.done()
    assert (await slow).status == 200


async def test_token_faults(sim: Simulator, client: Client) -> None:
    pair = sim.add_realm(REALM)
    sim.inject(FaultRule("invalid_grant", target="token", times=1))
    sim.inject(FaultRule("invalid_client", target="token", times=1))
    sim.inject(FaultRule("server_error", target="token", status=503, times=1))
    assert (await refresh(client, pair.refresh_token)).status == 400
    assert (await refresh(client, pair.refresh_token)).status == 401
    assert (await refresh(client, pair.refresh_token)).status == 503
    # The response of a refresh that happened is lost: the old refresh token is dead anyway.
    sim.inject(FaultRule("disconnect", target="token", after=True, realm_id=REALM, times=1))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await refresh(client, pair.refresh_token)
    assert (await refresh(client, pair.refresh_token)).status == 400
    assert sim.token_calls == 5


def test_fault_rule_validation() -> None:
    with pytest.raises(ValueError, match="unknown api fault"):
        FaultRule("invalid_grant")
    with pytest.raises(ValueError, match="target"):
        FaultRule("delay", target="nowhere")
    with pytest.raises(ValueError, match="unknown fault rule fields"):
        FaultRule.from_json({"kind": "throttle", "bogus": 1})
    rule = FaultRule.from_json({"kind": "throttle", "retry_after": "3", "times": 2})
    assert FaultRule.from_json(rule.to_json()) == rule


# ---- control routes ----------------------------------------------------------------------


async def test_control_routes(sim: Simulator, client: Client) -> None:
    assert client.app is not None and client.app[SIMULATOR_KEY] is sim
    created = await (await client.post("/_sim/realms", json={"realm_id": REALM})).json()
    assert created["realm_id"] == REALM
    pair = TokenPair(
        created["access_token"],
        created["refresh_token"],
        created["access_expires_at"],
        created["refresh_expires_at"],
    )
    assert (await api(client, pair, "customer/1")).status == 200

    added = await client.post("/_sim/faults", json={"kind": "throttle", "times": 1})
    assert added.status == 201
    bad = await client.post("/_sim/faults", json={"kind": "melt"})
    assert bad.status == 400
    assert (await api(client, pair, "customer/1")).status == 429

    await client.post("/_sim/faults", json={"kind": "server_error"})
    assert (await client.delete("/_sim/faults")).status == 200
    assert sim.faults == []

    limits = await client.post("/_sim/limits", json={"concurrency": 10, "per_minute": None})
    assert await limits.json() == {"concurrency": 10, "per_minute": None}
    assert sim.concurrency_limit == 10
    assert (await client.post("/_sim/latency", json={"api": "slow"})).status == 400
    latency = await client.post("/_sim/latency", json={"api": 0.01, "token": 0.02})
    assert await latency.json() == {"api": 0.01, "token": 0.02}
    assert sim.latency == 0.01 and sim.token_latency == 0.02

    stats = await (await client.get("/_sim/stats")).json()
    assert stats["api_requests"] == 2 and stats["token_calls"] == 0
    assert stats["max_in_flight"] == 1 and REALM in stats["realms"]

    expire = await client.post(f"/_sim/realms/{REALM}/expire-access")
    assert expire.status == 200
    assert (await api(client, pair, "customer/1")).status == 401

    await client.post("/_sim/reset")
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["api_requests"] == 0 and isinstance(sim.api_requests, list)
    assert all(isinstance(r, RecordedRequest) for r in sim.token_requests)


async def test_run_serves_and_prints_tokens_only_when_asked(unused_tcp_port: int) -> None:
    code = (
        "import sys; from qbo_gateway.simulator import run; "
        f"run('127.0.0.1', {unused_tcp_port}, realm_id='{REALM}', print_tokens=True)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f":{unused_tcp_port}" in first and "token" not in first
        tokens = json.loads(proc.stdout.readline())
        assert tokens["realm_id"] == REALM
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{unused_tcp_port}/v3/company/{REALM}/companyinfo/{REALM}"
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            async with session.get(url, headers=headers) as resp:
                assert resp.status == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


# ---- change data capture -----------------------------------------------------------------


def _iso(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, tz=UTC).isoformat()


async def _cdc(client: Client, pair: TokenPair, entities: str, since: float) -> Any:
    resp = await api(
        client, pair, "cdc", params={"entities": entities, "changedSince": _iso(since)}
    )
    return resp.status, await resp.json()


def _changed(body: Any) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for answer in body["CDCResponse"][0]["QueryResponse"]:
        for key, value in answer.items():
            if isinstance(value, list):
                found[key] = value
    return found


async def test_cdc_answers_creates_updates_and_deletes_since_a_time(
    sim: Simulator, client: Client, clock: FakeTime
) -> None:
    pair = sim.add_realm(REALM)
    clock.now += 600
    mark = clock.now
    assert _changed((await _cdc(client, pair, "Customer,Invoice", mark))[1]) == {}
    clock.now += 10
    renamed = await api(
        client,
        pair,
        "customer",
        method="POST",
        json={"Id": "3", "SyncToken": "0", "sparse": True, "DisplayName": "Renamed"},
    )
    assert renamed.status == 200
    created = await api(client, pair, "customer", method="POST", json={"DisplayName": "New"})
    new_id = (await created.json())["Customer"]["Id"]
    gone = await api(
        client,
        pair,
        "invoice",
        method="POST",
        params={"operation": "delete"},
        json={"Id": "4", "SyncToken": "0"},
    )
    assert (await gone.json())["Invoice"] == {"status": "Deleted", "domain": "QBO", "Id": "4"}
    items = [{"bId": "x", "operation": "delete", "Invoice": {"Id": "5", "SyncToken": "0"}}]
    batch = await api(client, pair, "batch", method="POST", json={"BatchItemRequest": items})
    assert (await batch.json())["BatchItemResponse"][0]["Invoice"]["status"] == "Deleted"
    sim.edit(REALM, "Customer", "7", {"DisplayName": "Edited in QuickBooks"})

    status, body = await _cdc(client, pair, "Customer,Invoice", mark)
    assert status == 200
    changed = _changed(body)
    customers = {c["Id"]: c for c in changed["Customer"]}
    assert set(customers) == {"3", new_id, "7"}
    assert customers["3"] == sim.entity(REALM, "Customer", "3")  # whole, as a read answers
    assert customers["7"]["DisplayName"] == "Edited in QuickBooks"
    invoices = changed["Invoice"]
    assert {i["Id"] for i in invoices} == {"4", "5"}
    assert all(i["status"] == "Deleted" and "LastUpdatedTime" in i["MetaData"] for i in invoices)
    assert (await api(client, pair, "invoice/4")).status == 400  # deleted: Object Not Found
    # Only what changed at or after changedSince, and only the entities asked for.
    later = clock.now + 1
    assert _changed((await _cdc(client, pair, "customer", later))[1]) == {}
    assert set(_changed((await _cdc(client, pair, "customer", mark))[1])) == {"Customer"}


async def test_cdc_refuses_more_than_30_days_and_caps_1000_objects(
    sim: Simulator, client: Client, clock: FakeTime
) -> None:
    sim.add_realm(REALM)
    clock.now += 31 * 86400
    pair = sim.issue_tokens(REALM)
    status, body = await _cdc(client, pair, "Customer", clock.now - 31 * 86400)
    assert status == 400 and body["Fault"]["Error"][0]["code"] == "2500"
    status, body = await _cdc(client, pair, "Nonsense", clock.now - 60)
    assert status == 400
    mark = clock.now
    for n in range(1010):
        sim.edit(REALM, "Customer", str(n % 25 + 1), {"Notes": str(n)})
        clock.now += 0.001
    for n in range(1000):
        created = await api(client, pair, "invoice", method="POST", json={"TxnDate": str(n)})
        assert created.status == 200
    status, body = await _cdc(client, pair, "Customer,Invoice", mark)
    changed = _changed(body)
    assert status == 200
    assert len(changed["Customer"]) == 25  # one object per entity, its latest version
    assert len(changed["Invoice"]) == 975  # 1000 objects in all: the rest is left out
    # Customer sees its own deletion refused: name lists are made inactive, not deleted.
    refused = await api(
        client,
        pair,
        "customer",
        method="POST",
        params={"operation": "delete"},
        json={"Id": "1", "SyncToken": "0"},
    )
    assert refused.status == 400
