"""QBOGatewayClient against a whole gateway and the simulator, on real sockets.

Every method and every exception class is driven through the real gateway: the faults are
injected at the simulator (what QBO would do) or configured on the gateway (callers, limits),
never faked in the client.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qbo_gateway.client import (
    BadRequest,
    CircuitOpen,
    Forbidden,
    GatewayFault,
    GatewayUnreachable,
    HealthUnavailable,
    PayloadTooLarge,
    QBOFault,
    QBOGatewayClient,
    QBOGatewayError,
    QBOResponse,
    QBOThrottled,
    RateLimited,
    ReconnectRequired,
    Unauthenticated,
    UnknownRealm,
    UpstreamTimeout,
    UpstreamUnavailable,
    gateway_error_hook,
    get_qbo_connection_manager,
)
from qbo_gateway.simulator import FaultRule
from tests.harness import OTHER_REALM, REALM, Stack, start_stack, stop_stack
from tests.redis_server import free_port

COMPANY = f"companyinfo/{REALM}"


@pytest.fixture
async def make_stack(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Stack] = []

    async def build(**overrides: Any) -> Stack:
        s = await start_stack(aiohttp_server, tmp_path / f"s{len(made)}", **overrides)
        made.append(s)
        return s

    yield build
    for s in made:
        await stop_stack(s)


@pytest.fixture
async def stack(make_stack: Any) -> Stack:
    return await make_stack()  # type: ignore[no-any-return]


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[QBOGatewayClient]:
    async with QBOGatewayClient(stack.proxy_url, stack.ops_url) as c:
        yield c


async def settle(stack: Stack) -> None:
    """Let the outcomes recorded after each response land (breaker, cool-down)."""
    await stack.gateway.admitter.drain()


# ---- make_qbo_request ------------------------------------------------------------------


async def test_read_returns_json_and_what_the_gateway_said(
    stack: Stack, client: QBOGatewayClient
) -> None:
    response = await client.make_qbo_request(REALM, COMPANY, request_id="trace-123")
    assert isinstance(response, QBOResponse)
    assert response.status == 200
    assert response["CompanyInfo"]["CompanyName"] == f"Sandbox Company {REALM}"
    assert response.data["CompanyInfo"]["Id"] == "1"
    assert dict(response) == response.data  # reads like the dict the original returned
    assert response.degraded is False and response.degraded_reason is None
    assert response.request_id == "trace-123"
    assert response.intuit_tid  # QBO's transaction id comes back through the gateway
    assert response.cache_status is not None and response.cache_status.startswith("qbo-gateway")
    seen = stack.sim.api_requests[-1]
    assert seen.path == f"/v3/company/{REALM}/{COMPANY}"


async def test_params_and_json_body_reach_qbo(stack: Stack, client: QBOGatewayClient) -> None:
    created = await client.make_qbo_request(
        REALM,
        "customer",
        method="POST",
        json={"DisplayName": "Client Test Co"},
        params={"requestid": "client-test-1"},
    )
    assert created["Customer"]["DisplayName"] == "Client Test Co"
    seen = stack.sim.api_requests[-1]
    assert seen.method == "POST"
    assert seen.query["requestid"] == "client-test-1"
    assert seen.headers["Content-Type"].startswith("application/json")
    again = await client.make_qbo_request(
        REALM, f"customer/{created['Customer']['Id']}", params={"minorversion": "75"}
    )
    assert again["Customer"]["DisplayName"] == "Client Test Co"


async def test_endpoint_may_carry_its_own_query_string(
    stack: Stack, client: QBOGatewayClient
) -> None:
    response = await client.make_qbo_request(
        REALM,
        "query?query=select * from Customer MAXRESULTS 3",
        params={"minorversion": "75"},
    )
    assert len(response["QueryResponse"]["Customer"]) == 3
    seen = stack.sim.api_requests[-1]
    assert seen.query["query"] == "select * from Customer MAXRESULTS 3"
    assert seen.query["minorversion"] == "75"


async def test_degraded_read_is_returned_with_reason_and_age(make_stack: Any) -> None:
    stack: Stack = await make_stack(breaker_failure_threshold=50)
    async with QBOGatewayClient(stack.proxy_url, stack.ops_url) as client:
        fresh = await client.make_qbo_request(REALM, COMPANY)
        await settle(stack)
        stack.sim.inject(FaultRule(kind="server_error_html", status=503, path="companyinfo"))
        stale = await client.make_qbo_request(REALM, COMPANY)
        assert stale.degraded is True
        assert stale.degraded_reason == "upstream-error"
        assert stale.age is not None and stale.age >= 0
        assert stale.data == fresh.data
        await settle(stack)
        # Degraded but serving counts as "can be served now".
        doc = await client.health(REALM)
        assert doc is not None and doc["status"] == "degraded"
        assert await client.ensure_healthy_connection(REALM) is True
        # allow_stale=False: the caller gets QBO's failure instead of the cached copy.
        with pytest.raises(QBOFault) as caught:
            await client.make_qbo_request(REALM, COMPANY, allow_stale=False)
        # QBO's edge answered an HTML 503: no fault code, the status and a snippet instead.
        assert caught.value.status == 503 and caught.value.code is None
        assert "Service Unavailable" in caught.value.detail


async def test_client_refuses_endpoints_that_leave_the_realm(client: QBOGatewayClient) -> None:
    for bad in ("../4620816365178923/companyinfo/1", "a//b", "", "http://evil/x", "./x"):
        with pytest.raises(ValueError):
            await client.make_qbo_request(REALM, bad)
    with pytest.raises(ValueError):
        await client.make_qbo_request("12/../34", "companyinfo/1")


# ---- query -----------------------------------------------------------------------------


async def test_query_one_page(stack: Stack, client: QBOGatewayClient) -> None:
    result = await client.query(REALM, "SELECT * FROM Customer MAXRESULTS 2")
    assert result.entity == "Customer"
    assert len(result) == 2 and len(result.responses) == 1
    assert result.degraded is False
    seen = stack.sim.api_requests[-1]
    assert seen.method == "POST" and seen.path.endswith("/query")
    assert seen.body == b"SELECT * FROM Customer MAXRESULTS 2"
    count = await client.query(REALM, "SELECT COUNT(*) FROM Customer")
    assert count.total_count == 25 and count.rows == []  # the simulator seeds 25


async def test_query_all_pages_respects_startposition_and_maxresults(
    stack: Stack, client: QBOGatewayClient
) -> None:
    everything = await client.query(REALM, "SELECT * FROM Customer", all_pages=True)
    assert len(everything) == 25 and len(everything.responses) == 1  # one page of up to 1000
    ids = [row["Id"] for row in everything]
    assert len(set(ids)) == 25
    before = len(stack.sim.api_requests)
    paged = await client.query(REALM, "select * from Customer maxresults 10", all_pages=True)
    assert [row["Id"] for row in paged] == ids
    bodies = [r.body.decode() for r in stack.sim.api_requests[before:]]
    assert bodies == [
        "select * from Customer STARTPOSITION 1 MAXRESULTS 10",
        "select * from Customer STARTPOSITION 11 MAXRESULTS 10",
        "select * from Customer STARTPOSITION 21 MAXRESULTS 10",
    ]
    tail = await client.query(
        REALM, "SELECT * FROM Customer STARTPOSITION 20 MAXRESULTS 3;", all_pages=True
    )
    assert [row["Id"] for row in tail] == ids[19:]
    assert len(tail.responses) == 3  # 3 rows, 3 rows, then the empty page that ends it
    sized = await client.query(REALM, "SELECT * FROM Customer", all_pages=True, page_size=10)
    assert [row["Id"] for row in sized] == ids and len(sized.responses) == 3


async def test_query_fault_is_a_qbo_fault(client: QBOGatewayClient) -> None:
    with pytest.raises(QBOFault) as caught:
        await client.query(REALM, "SELEKT nonsense")
    assert caught.value.code == "4000"
    assert "QueryParserError" in caught.value.detail


# ---- exceptions ------------------------------------------------------------------------


async def test_qbo_fault_carries_code_message_detail_and_tid(client: QBOGatewayClient) -> None:
    with pytest.raises(QBOFault) as caught:
        await client.make_qbo_request(REALM, "invoice/424242")
    fault = caught.value
    assert not isinstance(fault, GatewayFault)
    assert fault.status == 400
    assert fault.code == "610"
    assert fault.message == "Object Not Found"
    assert fault.detail.startswith("Object Not Found :")
    assert fault.intuit_tid
    assert fault.request_id
    assert fault.errors[0]["code"] == "610"


async def test_fault_inside_a_200_is_raised(stack: Stack, client: QBOGatewayClient) -> None:
    stack.sim.inject(FaultRule(kind="fault_in_200", path="companyinfo", times=1))
    with pytest.raises(QBOFault) as caught:
        await client.make_qbo_request(REALM, COMPANY, allow_stale=False)
    assert caught.value.status == 200 and caught.value.code == "6000"


async def test_qbo_throttle_then_gateway_rate_limit(make_stack: Any) -> None:
    stack: Stack = await make_stack(throttle_cooldown_seconds=60, cache_stale_seconds=0)
    stack.sim.inject(FaultRule(kind="throttle", times=1, path="companyinfo"))
    async with QBOGatewayClient(stack.proxy_url, stack.ops_url) as client:
        with pytest.raises(QBOThrottled) as first:
            await client.make_qbo_request(REALM, COMPANY)
        assert isinstance(first.value, RateLimited) and isinstance(first.value, QBOFault)
        assert first.value.status == 429 and first.value.code == "3001"
        await settle(stack)
        with pytest.raises(RateLimited) as second:
            await client.make_qbo_request(REALM, COMPANY)
        assert not isinstance(second.value, QBOFault)
        assert second.value.code == "GW-RATE-LIMITED"
        assert second.value.fault_code == "3001"
        assert second.value.retry_after is not None and 50 <= second.value.retry_after <= 60


async def test_circuit_open(make_stack: Any) -> None:
    stack: Stack = await make_stack(
        breaker_failure_threshold=2, breaker_recovery_seconds=300, cache_stale_seconds=0
    )
    stack.sim.inject(FaultRule(kind="server_error", path="customer"))
    async with QBOGatewayClient(stack.proxy_url, stack.ops_url) as client:
        for _ in range(2):
            with pytest.raises(QBOFault) as failed:
                await client.make_qbo_request(
                    REALM, "customer", method="POST", json={"DisplayName": "x"}
                )
            assert failed.value.status == 500 and failed.value.code == "10000"
            await settle(stack)
        with pytest.raises(CircuitOpen) as caught:
            await client.make_qbo_request(REALM, COMPANY)
        assert caught.value.status == 503 and caught.value.code == "GW-CIRCUIT-OPEN"
        assert caught.value.fault_code == "9503"
        assert caught.value.retry_after is not None and 250 <= caught.value.retry_after <= 300
        assert await client.ensure_healthy_connection(REALM) is False
        doc = await client.health(REALM)
        assert doc is not None and doc["breaker"]["state"] == "open"


async def test_reconnect_required(stack: Stack, client: QBOGatewayClient) -> None:
    stack.sim.expire_access_token(REALM)
    stack.sim.inject(FaultRule(target="token", kind="invalid_grant"))
    with pytest.raises(ReconnectRequired) as caught:
        await client.make_qbo_request(REALM, COMPANY, allow_stale=False)
    assert caught.value.status == 401 and caught.value.code == "GW-RECONNECT-REQUIRED"
    assert caught.value.fault_code == "9410"
    assert await client.ensure_healthy_connection(REALM) is False  # False, not an exception
    doc = await client.health(REALM)
    assert doc is not None and doc["status"] == "needs_reconnect"


async def test_unknown_realm(client: QBOGatewayClient) -> None:
    with pytest.raises(UnknownRealm) as caught:
        await client.make_qbo_request(OTHER_REALM, f"companyinfo/{OTHER_REALM}")
    assert caught.value.status == 404 and caught.value.code == "GW-UNKNOWN-REALM"
    assert caught.value.fault_code == "9404"
    assert caught.value.message  # the gateway's QBO-shaped fault was read
    assert isinstance(caught.value, QBOGatewayError)  # one base class catches them all


async def test_bad_path_from_the_gateway(client: QBOGatewayClient) -> None:
    with pytest.raises(BadRequest) as caught:
        await client.make_qbo_request(REALM, "companyinfo/%2e%2e")
    assert caught.value.status == 400 and caught.value.code == "GW-BAD-PATH"
    assert caught.value.fault_code == "9400"


async def test_payload_too_large(make_stack: Any) -> None:
    stack: Stack = await make_stack(max_body_bytes=64)
    async with QBOGatewayClient(stack.proxy_url, stack.ops_url) as client:
        with pytest.raises(PayloadTooLarge) as caught:
            await client.make_qbo_request(
                REALM, "customer", method="POST", json={"DisplayName": "x" * 200}
            )
    assert caught.value.status == 413
    assert caught.value.code == "GW-PAYLOAD-TOO-LARGE" and caught.value.fault_code == "9413"


async def test_upstream_unavailable(make_stack: Any) -> None:
    stack: Stack = await make_stack(cache_stale_seconds=0, breaker_failure_threshold=50)
    stack.sim.inject(FaultRule(kind="disconnect", path="companyinfo"))
    async with QBOGatewayClient(stack.proxy_url, stack.ops_url) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await client.make_qbo_request(REALM, COMPANY)
    assert caught.value.status == 502 and caught.value.code == "GW-UPSTREAM-UNAVAILABLE"
    assert caught.value.fault_code == "9502"


async def test_upstream_timeout(make_stack: Any) -> None:
    stack: Stack = await make_stack(
        cache_stale_seconds=0, breaker_failure_threshold=50, request_timeout_seconds=0.3
    )
    stack.sim.inject(FaultRule(kind="delay", delay=2.0, path="companyinfo"))
    async with QBOGatewayClient(stack.proxy_url, stack.ops_url) as client:
        with pytest.raises(UpstreamTimeout) as caught:
            await client.make_qbo_request(REALM, COMPANY)
    assert caught.value.status == 504 and caught.value.code == "GW-UPSTREAM-TIMEOUT"
    assert caught.value.fault_code == "9504"


class TestCallers:
    KEY = "billing-service-key-0123456789"

    @pytest.fixture
    async def guarded(self, make_stack: Any, tmp_path: Path) -> Stack:
        digest = hashlib.sha256(self.KEY.encode()).hexdigest()
        path = tmp_path / "callers.yaml"
        path.write_text(
            f'callers:\n  - name: billing\n    key_sha256: "{digest}"\n    realms: ["{REALM}"]\n'
        )
        return await make_stack(callers_file=path)  # type: ignore[no-any-return]

    async def test_key_lets_the_caller_in(self, guarded: Stack) -> None:
        async with QBOGatewayClient(guarded.proxy_url, guarded.ops_url, self.KEY) as client:
            response = await client.make_qbo_request(REALM, COMPANY)
        assert response["CompanyInfo"]["Id"] == "1"
        # The caller key is the gateway's business: it never travels on to QBO.
        assert self.KEY not in str(guarded.sim.api_requests[-1].headers)

    async def test_missing_or_wrong_key_is_unauthenticated(self, guarded: Stack) -> None:
        for key in (None, "wrong-key-0123456789"):
            async with QBOGatewayClient(guarded.proxy_url, guarded.ops_url, key) as client:
                with pytest.raises(Unauthenticated) as caught:
                    await client.make_qbo_request(REALM, COMPANY)
            assert caught.value.status == 401 and caught.value.code == "GW-UNAUTHENTICATED"
            assert caught.value.fault_code == "9401"

    async def test_realm_outside_the_callers_list_is_forbidden(self, guarded: Stack) -> None:
        async with QBOGatewayClient(guarded.proxy_url, guarded.ops_url, self.KEY) as client:
            with pytest.raises(Forbidden) as caught:
                await client.make_qbo_request(OTHER_REALM, f"companyinfo/{OTHER_REALM}")
        assert caught.value.status == 403 and caught.value.code == "GW-FORBIDDEN"
        assert caught.value.fault_code == "9403"


async def test_unreachable_gateway_raises_gateway_unreachable() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with QBOGatewayClient(url, url) as client:
        with pytest.raises(GatewayUnreachable):
            await client.make_qbo_request(REALM, COMPANY)
        with pytest.raises(GatewayUnreachable):
            await client.ensure_healthy_connection(REALM)
        with pytest.raises(GatewayUnreachable):
            await client.query(REALM, "SELECT * FROM Customer")


async def test_requests_hook_raises_typed_gateway_errors(make_stack: Any) -> None:
    requests = pytest.importorskip("requests", reason="requests comes with python-quickbooks")
    stack: Stack = await make_stack(throttle_cooldown_seconds=60, cache_stale_seconds=0)

    def get(url: str) -> Any:
        with requests.Session() as session:
            session.hooks["response"].append(gateway_error_hook)
            return session.get(url, timeout=10)

    ok = await asyncio.to_thread(get, stack.api(COMPANY))
    assert ok.status_code == 200  # a normal answer passes untouched
    fault = await asyncio.to_thread(get, stack.api("invoice/424242"))
    assert fault.status_code == 400  # QBO's own fault is left to the SDK
    with pytest.raises(UnknownRealm):
        await asyncio.to_thread(get, stack.api(f"companyinfo/{OTHER_REALM}", OTHER_REALM))
    stack.sim.inject(FaultRule(kind="throttle", times=1, path="companyinfo"))
    throttled = await asyncio.to_thread(get, stack.api(COMPANY))
    assert throttled.status_code == 429  # QBO's throttle: the SDK's business
    await settle(stack)
    with pytest.raises(RateLimited) as caught:
        await asyncio.to_thread(get, stack.api(COMPANY))
    assert caught.value.retry_after is not None and caught.value.retry_after > 0


# ---- ensure_healthy_connection -----------------------------------------------------------


async def test_healthy_realm_is_true_unknown_realm_is_false(
    stack: Stack, client: QBOGatewayClient
) -> None:
    await client.make_qbo_request(REALM, COMPANY)  # the monitor has seen the realm work
    await settle(stack)
    assert await client.ensure_healthy_connection(REALM) is True
    doc = await client.health(REALM)
    assert doc is not None and doc["status"] == "healthy"
    assert await client.ensure_healthy_connection(OTHER_REALM) is False
    assert await client.health(OTHER_REALM) is None


async def test_health_on_the_wrong_listener_is_reported(stack: Stack) -> None:
    # Pointed at the proxy instead of the ops listener: an error, not a silent False.
    async with QBOGatewayClient(stack.proxy_url, stack.proxy_url) as client:
        with pytest.raises(HealthUnavailable):
            await client.ensure_healthy_connection(REALM)


# ---- configuration and session ownership -------------------------------------------------


async def test_settings_come_from_the_environment(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QBO_GATEWAY_URL", stack.proxy_url + "/")
    monkeypatch.setenv("QBO_GATEWAY_OPS_URL", stack.ops_url)
    monkeypatch.setenv("QBO_GATEWAY_KEY", "secret-caller-key-xyz")
    client = get_qbo_connection_manager(object())  # the original factory took a db
    try:
        assert client.proxy_url == stack.proxy_url
        assert client.ops_url == stack.ops_url
        assert "secret-caller-key-xyz" not in repr(client)
        response = await client.make_qbo_request(REALM, COMPANY)  # open mode ignores the key
        assert response.status == 200
    finally:
        await client.close()


async def test_a_given_session_is_used_and_left_open(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        client = QBOGatewayClient(stack.proxy_url, stack.ops_url, session=session)
        response = await client.make_qbo_request(REALM, COMPANY)
        assert response.status == 200
        await client.close()
        assert not session.closed
        again = await client.make_qbo_request(REALM, COMPANY)
        assert again.status == 200


async def test_owned_session_is_closed_and_reopened_on_use(stack: Stack) -> None:
    client = QBOGatewayClient(stack.proxy_url, stack.ops_url)
    await client.make_qbo_request(REALM, COMPANY)
    session = client._get_session()
    await client.close()
    assert session.closed
    assert (await client.make_qbo_request(REALM, COMPANY)).status == 200
    await client.close()
