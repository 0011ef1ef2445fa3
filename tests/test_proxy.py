"""The proxy over real sockets: path checks, header hygiene, bodies, callers, failures."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from yarl import URL

from tests.harness import OTHER_REALM, REALM, Stack, start_stack, stop_stack
from tests.redis_server import free_port


@pytest.fixture
async def stack(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    s = await start_stack(aiohttp_server, tmp_path)
    yield s
    await stop_stack(s)


async def raw_request(url: str, target: str, extra: str = "") -> tuple[int, bytes]:
    """Send a request line exactly as written (clients would normalize these paths)."""
    u = URL(url)
    reader, writer = await asyncio.open_connection(u.host, u.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_get_is_proxied_with_the_realms_token(stack: Stack) -> None:
    async with stack.session.get(stack.api(f"companyinfo/{REALM}")) as resp:
        body = await resp.json()
        assert resp.status == 200
        assert body["CompanyInfo"]
        assert resp.headers["intuit_tid"]
        assert resp.headers["X-Request-Id"]
        assert resp.headers["Cache-Status"].startswith("qbo-gateway")
    seen = stack.sim.api_requests[-1]
    assert seen.headers["Authorization"] == f"Bearer {stack.pair.access_token}"
    assert seen.query["minorversion"] == "75"
    assert seen.headers["Accept"] == "application/json"


async def test_caller_minorversion_and_request_id_are_kept(stack: Stack) -> None:
    headers = {"X-Request-Id": "abc-123", "Accept": "application/xml"}
    url = stack.api(f"companyinfo/{REALM}") + "?minorversion=70"
    async with stack.session.get(url, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "abc-123"
    seen = stack.sim.api_requests[-1]
    assert seen.query["minorversion"] == "70"
    assert seen.headers["Accept"] == "application/xml"


async def test_query_string_reaches_qbo_unchanged(stack: Stack) -> None:
    raw = "query=select%20*%20from%20Customer%20STARTPOSITION%201%20MAXRESULTS%205"
    async with stack.session.get(URL(stack.api("query") + "?" + raw, encoded=True)) as resp:
        doc = await resp.json()
        assert resp.status == 200
    assert len(doc["QueryResponse"]["Customer"]) == 5
    assert stack.sim.api_requests[-1].query["query"].startswith("select * from Customer")


@pytest.mark.parametrize(
    "target",
    [
        f"/v3/company/{REALM}/../{OTHER_REALM}/companyinfo/1",
        f"/v3/company/{REALM}/%2e%2e/companyinfo/1",
        f"/v3/company/{REALM}/%2E%2E/companyinfo/1",
        f"/v3/company/{REALM}/a%2Fb",
        f"/v3/company/{REALM}/a%2fb",
        f"/v3/company/{REALM}/a%5Cb",
        f"/v3/company/{REALM}/a%5cb",
        f"/v3/company/{REALM}/a\\b",
        f"/v3/company/{REALM}//companyinfo",
        f"/v3/company/{REALM}/./companyinfo",
        f"//v3/company/{REALM}/companyinfo/1",
        "/v3/company/abc/companyinfo/1",
        "/v3/company/12a4/companyinfo/1",
        f"/v3/company/{REALM}",
        f"/v3/company/{REALM}/",
        "/v2/company/1/x",
        f"http://evil.example/v3/company/{REALM}/companyinfo/1",
    ],
)
async def test_refused_paths_never_reach_qbo(stack: Stack, target: str) -> None:
    status, body = await raw_request(stack.proxy_url, target)
    assert status == 400, target
    fault = json.loads(body)["Fault"]
    assert fault["type"] == "GatewayFault"
    assert fault["Error"][0]["code"] == "9400"
    assert stack.sim.api_requests == []


async def test_bad_path_is_refused_before_caller_check(stack: Stack) -> None:
    async with stack.session.get(f"{stack.proxy_url}/v3/company/x/y") as resp:
        assert resp.status == 400
        assert resp.headers["X-QBO-Gateway-Error"] == "GW-BAD-PATH"
        assert resp.headers["X-Request-Id"]
        assert resp.headers["Cache-Status"].startswith("qbo-gateway")


async def test_caller_credentials_and_hop_headers_are_not_forwarded(stack: Stack) -> None:
    headers = {
        "Authorization": "Bearer caller-secret-key",
        "X-QBO-Gateway-Key": "caller-secret-key",
        "Cookie": "session=1",
        "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-Host": "evil.example",
        "Connection": "keep-alive, X-Drop-Me",
        "X-Drop-Me": "1",
        "Keep-Alive": "timeout=5",
        "X-Keep-Me": "yes",
    }
    async with stack.session.get(stack.api(f"companyinfo/{REALM}"), headers=headers) as resp:
        assert resp.status == 200
        assert "Set-Cookie" not in resp.headers
    seen = {k.lower(): v for k, v in stack.sim.api_requests[-1].headers.items()}
    assert seen["authorization"] == f"Bearer {stack.pair.access_token}"
    for name in (
        "x-qbo-gateway-key",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-drop-me",
        "keep-alive",
    ):
        assert name not in seen, name
    assert seen["x-keep-me"] == "yes"
    assert seen["host"].startswith("127.0.0.1")


async def test_three_mib_body_arrives_byte_identical(stack: Stack) -> None:
    body = bytes(range(256)) * (3 * 1024 * 1024 // 256)
    headers = {"Content-Type": "application/octet-stream"}
    async with stack.session.post(stack.api("upload"), data=body, headers=headers) as resp:
        doc = await resp.json()
        assert resp.status == 200
    assert doc["sha256"] == hashlib.sha256(body).hexdigest()
    assert stack.sim.api_requests[-1].body == body


async def test_large_response_streams_back_whole(stack: Stack) -> None:
    size = 6 * 1024 * 1024
    async with stack.session.get(stack.api("reports/ProfitAndLoss") + f"?sim_size={size}") as r:
        data = await r.read()
        assert r.status == 200
    assert len(data) >= size * 0.95
    assert json.loads(data)["Header"]["ReportName"] == "ProfitAndLoss"


async def test_write_gets_one_requestid(stack: Stack) -> None:
    async with stack.session.post(stack.api("customer"), json={"DisplayName": "A"}) as resp:
        assert resp.status == 200
    assert len(stack.sim.api_requests[-1].query["requestid"]) >= 16


async def test_unknown_realm_is_404(stack: Stack) -> None:
    async with stack.session.get(stack.api("companyinfo/1", realm=OTHER_REALM)) as resp:
        assert resp.status == 404
        assert resp.headers["X-QBO-Gateway-Error"] == "GW-UNKNOWN-REALM"
        doc = await resp.json()
        assert doc["Fault"]["Error"][0]["code"] == "9404"
        assert doc["Fault"]["type"] == "GatewayFault"
        assert "time" in doc


async def test_unknown_realm_ids_leave_no_state_behind(stack: Stack) -> None:
    from qbo_gateway.admission.backend_memory import MemoryAdmission

    async with stack.session.get(stack.api(f"companyinfo/{REALM}")) as resp:
        assert resp.status == 200
    admission = stack.gateway.admitter.backend
    assert isinstance(admission, MemoryAdmission)
    budget = stack.gateway.proxy.caller.retry.budget
    assert (admission.realms_held, budget.realms_held) == (1, 1)
    for realm in range(1000, 1050):
        for method, path in (("GET", "companyinfo/1"), ("POST", "customer")):
            async with stack.session.request(method, stack.api(path, realm=str(realm))) as resp:
                assert resp.status == 404
    assert (admission.realms_held, budget.realms_held) == (1, 1)


async def test_qbo_fault_passes_through(stack: Stack) -> None:
    async with stack.session.get(stack.api("invoice/999999")) as resp:
        doc = await resp.json()
        assert resp.status == 400
        assert "X-QBO-Gateway-Error" not in resp.headers
    assert doc["Fault"]["Error"][0]["code"] == "610"


async def test_metrics_count_requests(stack: Stack) -> None:
    for _ in range(3):
        async with stack.session.get(stack.api(f"companyinfo/{REALM}")) as resp:
            assert resp.status == 200
    labels = {"method": "GET", "outcome": "upstream", "code": "200"}
    assert stack.metric("qbo_gateway_requests_total", labels) == 3
    assert stack.metric("qbo_gateway_request_duration_seconds_count", {"outcome": "upstream"}) == 3
    async with stack.session.get(stack.ops_url + "/metrics") as resp:
        text = await resp.text()
    assert "qbo_gateway_build_info" in text
    assert "qbo_gateway_state_backend_up 1.0" in text
    assert REALM not in text


async def test_summary_log_line_has_no_secrets(stack: Stack) -> None:
    with capture_logs() as logs:
        url = (
            stack.api("query")
            + "?query=select%20*%20from%20Customer%20where%20Id%3D%27secretsql%27"
        )
        async with stack.session.get(
            URL(url, encoded=True), headers={"Authorization": "Bearer my-caller-key-123"}
        ) as resp:
            assert resp.status == 200
    lines = [entry for entry in logs if entry.get("event") == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["realm_id"] == REALM and line["status"] == 200 and line["intuit_tid"]
    assert line["outcome"] == "upstream" and line["path"] == "query"
    text = json.dumps(logs, default=str)
    for secret in (
        stack.pair.access_token,
        stack.pair.refresh_token,
        "my-caller-key-123",
        "secretsql",
    ):
        assert secret not in text


async def test_payload_over_limit_by_content_length(aiohttp_server: Any, tmp_path: Path) -> None:
    s = await start_stack(aiohttp_server, tmp_path, max_body_bytes=1024)
    try:
        async with s.session.post(s.api("customer"), data=b"x" * 2048) as resp:
            assert resp.status == 413
            assert resp.headers["X-QBO-Gateway-Error"] == "GW-PAYLOAD-TOO-LARGE"
        assert s.sim.api_requests == []
    finally:
        await stop_stack(s)


async def test_chunked_body_over_limit_is_refused(aiohttp_server: Any, tmp_path: Path) -> None:
    """The 413 comes while the body is still arriving: it was never held whole."""
    s = await start_stack(aiohttp_server, tmp_path, max_body_bytes=256 * 1024)
    try:
        u = URL(s.proxy_url)
        reader, writer = await asyncio.open_connection(u.host, u.port)
        writer.write(
            f"POST /v3/company/{REALM}/upload HTTP/1.1\r\nHost: x\r\n"
            "Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        )
        chunk = b"y" * 65536
        for _ in range(8):  # 512 KiB sent, twice the limit; the final chunk never comes
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        assert head.startswith(b"HTTP/1.1 413")
        assert b"GW-PAYLOAD-TOO-LARGE" in head
        assert s.sim.api_requests == []
    finally:
        await stop_stack(s)


async def test_upstream_unreachable_is_502(aiohttp_server: Any, tmp_path: Path) -> None:
    s = await start_stack(aiohttp_server, tmp_path, api_base_url=f"http://127.0.0.1:{free_port()}")
    try:
        async with s.session.get(s.api(f"companyinfo/{REALM}")) as resp:
            assert resp.status == 502
            assert resp.headers["X-QBO-Gateway-Error"] == "GW-UPSTREAM-UNAVAILABLE"
    finally:
        await stop_stack(s)


async def test_deadline_is_504(aiohttp_server: Any, tmp_path: Path) -> None:
    s = await start_stack(aiohttp_server, tmp_path, request_timeout_seconds=0.3)
    s.sim.latency = 2.0
    try:
        async with s.session.get(s.api(f"companyinfo/{REALM}")) as resp:
            assert resp.status == 504
            assert resp.headers["X-QBO-Gateway-Error"] == "GW-UPSTREAM-TIMEOUT"
    finally:
        s.sim.latency = 0.0
        await stop_stack(s)


class TestCallers:
    KEY = "billing-service-key-0123456789"

    @pytest.fixture
    async def guarded(self, aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Stack]:
        digest = hashlib.sha256(self.KEY.encode()).hexdigest()
        other = hashlib.sha256(b"other-key-0123456789").hexdigest()
        path = tmp_path / "callers.yaml"
        path.write_text(
            "callers:\n"
            f'  - name: billing\n    key_sha256: "{digest}"\n    realms: ["{REALM}"]\n'
            f'  - name: other\n    key_sha256: "{other}"\n    realms: ["{OTHER_REALM}"]\n'
        )
        s = await start_stack(aiohttp_server, tmp_path, callers_file=path)
        yield s
        await stop_stack(s)

    async def test_missing_key_is_401(self, guarded: Stack) -> None:
        async with guarded.session.get(guarded.api(f"companyinfo/{REALM}")) as resp:
            assert resp.status == 401
            assert resp.headers["X-QBO-Gateway-Error"] == "GW-UNAUTHENTICATED"

    async def test_wrong_key_is_401(self, guarded: Stack) -> None:
        headers = {"Authorization": "Bearer not-the-key"}
        async with guarded.session.get(guarded.api("query"), headers=headers) as resp:
            assert resp.status == 401
        assert guarded.sim.api_requests == []

    @pytest.mark.parametrize("header", ["Authorization", "X-QBO-Gateway-Key"])
    async def test_both_header_forms_work(self, guarded: Stack, header: str) -> None:
        value = f"Bearer {self.KEY}" if header == "Authorization" else self.KEY
        async with guarded.session.get(
            guarded.api(f"companyinfo/{REALM}"), headers={header: value}
        ) as resp:
            assert resp.status == 200
        assert guarded.sim.api_requests[-1].headers["Authorization"] != value

    async def test_realm_without_grant_is_403(self, guarded: Stack) -> None:
        headers = {"X-QBO-Gateway-Key": "other-key-0123456789"}
        async with guarded.session.get(
            guarded.api(f"companyinfo/{REALM}"), headers=headers
        ) as resp:
            assert resp.status == 403
            assert resp.headers["X-QBO-Gateway-Error"] == "GW-FORBIDDEN"
