"""The listeners' edges, through a whole gateway on real sockets, driven byte by byte.

Malformed requests get the gateway's fault (never aiohttp's plain text) and nothing a
caller sent reaches the log; slow-header connections are closed; open connections are
bounded per listener; the JSON health routes need the read token when one is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from qbo_gateway.log_foreign import set_caller_key_hashes
from qbo_gateway.logs import configure_logging
from tests.harness import REALM, Stack, start_stack, stop_stack
from tests.test_cli import client, ports, run_cli, start_serve, wait_ready

__all__ = ["client", "ports"]  # fixtures shared with the CLI tests

CALLER_KEY = "edge-caller-key-0123456789abcdef"
MALFORMED_WITH_KEY = [
    # A key followed by a DEL byte.
    f"X-QBO-Gateway-Key: {CALLER_KEY}\x7f\r\n",
    # An obs-folded Authorization: the key alone on a continuation line.
    f"Authorization: Bearer\r\n {CALLER_KEY}\r\n",
    # A tab and a control byte between Bearer and the key.
    f"Authorization: Bearer\t\x01{CALLER_KEY}\r\n",
]


async def exchange(host: str, port: int, raw: bytes) -> bytes:
    """Send raw bytes, read until the server closes (every refusal closes)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_fault(answer: bytes, status: int, name: str) -> dict[str, Any]:
    got, headers, body = parse(answer)
    assert got == status, answer
    assert headers["x-qbo-gateway-error"] == name
    assert headers["x-request-id"]
    assert headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    (error,) = doc["Fault"]["Error"]
    assert error["code"].isdigit()
    assert doc["Fault"]["type"] == "GatewayFault"
    return doc  # type: ignore[no-any-return]


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging("debug", "json", stream=buffer)
    yield buffer
    configure_logging("warning", "console")
    set_caller_key_hashes([])


@pytest.fixture
async def stack(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    callers = tmp_path / "callers.yaml"
    digest = hashlib.sha256(CALLER_KEY.encode()).hexdigest()
    callers.write_text(
        f'callers:\n  - name: billing\n    key_sha256: "{digest}"\n    realms: ["{REALM}"]\n'
    )
    s = await start_stack(aiohttp_server, tmp_path, callers_file=callers)
    yield s
    await stop_stack(s)


def proxy_addr(s: Stack) -> tuple[str, int]:
    return str(s.proxy_server.host), int(s.proxy_server.port or 0)


@pytest.mark.parametrize("bad_header", MALFORMED_WITH_KEY)
async def test_malformed_header_answer_is_a_fault_and_no_key_is_logged(
    stack: Stack, log_output: io.StringIO, bad_header: str
) -> None:
    raw = f"GET /v3/company/{REALM}/companyinfo/{REALM} HTTP/1.1\r\nHost: x\r\n{bad_header}\r\n"
    answer = await exchange(*proxy_addr(stack), raw.encode("latin-1"))
    assert_fault(answer, 400, "GW-BAD-PATH")
    assert CALLER_KEY.encode() not in answer  # the request line is never echoed
    text = log_output.getvalue()
    assert CALLER_KEY not in text
    events = [json.loads(line)["event"] for line in text.splitlines() if line.strip()]
    assert "request_malformed" in events


def test_library_records_quoting_raw_header_lines_are_scrubbed(log_output: io.StringIO) -> None:
    # The backstop: whatever a library logs, a caller key or bearer value never shows.
    set_caller_key_hashes([hashlib.sha256(CALLER_KEY.encode()).hexdigest()])
    server = logging.getLogger("aiohttp.server")
    server.error("Invalid header value char:\n\n  b'X-QBO-Gateway-Key: %s\\x7f'", CALLER_KEY)
    server.error("Unexpected whitespace after header value:\n\n  b' %s'", CALLER_KEY)
    server.error("bad: Authorization: Bearer\t\x01%s", CALLER_KEY)
    logging.getLogger("some.library").warning("Bearer\\t\\x01other-bearer-value-123456 failed")
    logging.getLogger("some.library").warning("key=%s/x", CALLER_KEY)
    text = log_output.getvalue()
    assert CALLER_KEY not in text
    assert "other-bearer-value-123456" not in text
    assert text.count("[REDACTED]") >= 5


@pytest.mark.parametrize(
    "request_line",
    [
        f"GET /v3/company/{REALM}/a%0ab HTTP/1.1",
        "CONNECT example.com:443 HTTP/1.1",
        "GET http://example.com/ HTTP/1.1",
        "NOT A REQUEST LINE",
        f"GET /v3/company/{REALM}/x HTTP/9.9",
    ],
)
async def test_unroutable_and_unparsable_requests_get_faults(
    stack: Stack, request_line: str
) -> None:
    raw = f"{request_line}\r\nHost: example.com\r\nConnection: close\r\n\r\n".encode()
    answer = await exchange(*proxy_addr(stack), raw)
    status, headers, _ = parse(answer)
    assert status in (400, 405), answer
    assert headers["x-qbo-gateway-error"] in ("GW-BAD-PATH", "GW-METHOD-NOT-ALLOWED")
    assert_fault(answer, status, headers["x-qbo-gateway-error"])
    assert b"example.com" not in answer.partition(b"\r\n\r\n")[2]
    assert stack.sim.api_request_count == 0


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "OPTIONS", "PUT", "DELETE", "HEAD"])
async def test_only_get_and_post_are_forwarded(stack: Stack, method: str) -> None:
    async with stack.session.request(
        method,
        stack.api(f"companyinfo/{REALM}"),
        headers={"Authorization": f"Bearer {CALLER_KEY}", "X-Request-Id": "rid-405"},
    ) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, POST"
        assert resp.headers["X-QBO-Gateway-Error"] == "GW-METHOD-NOT-ALLOWED"
        assert resp.headers["X-Request-Id"] == "rid-405"
        if method != "HEAD":
            doc = await resp.json()
            assert doc["Fault"]["Error"][0]["code"] == "9405"
    assert stack.sim.api_request_count == 0


# --- slow peers -------------------------------------------------------------------------


async def wait_closed_by_server(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout=10)


async def test_slow_headers_are_cut_off_at_the_header_deadline(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    s = await start_stack(aiohttp_server, tmp_path, header_timeout_seconds=0.3)
    try:
        host, port = proxy_addr(s)
        # Silent after connecting: closed, and never answered.
        reader, writer = await asyncio.open_connection(host, port)
        assert await wait_closed_by_server(reader) == b""
        writer.close()
        # Trickling bytes does not extend the deadline (a slowloris keeps sending).
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /v3/company/{REALM}/companyinfo/{REALM} HTTP/1.1\r\n".encode())
        trickle = asyncio.create_task(_trickle(writer))
        assert await wait_closed_by_server(reader) == b""
        trickle.cancel()
        writer.close()
        closed = s.metric(
            "qbo_gateway_connections_closed_total",
            {"listener": "proxy", "reason": "header_timeout"},
        )
        assert closed == 2
        # A caller that sends its headers in time is answered, on the same kind of socket.
        answer = await exchange(
            host,
            port,
            f"GET /v3/company/{REALM}/companyinfo/{REALM} HTTP/1.1\r\nHost: x\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert parse(answer)[0] == 200
    finally:
        await stop_stack(s)


async def test_a_kept_alive_connection_trickling_its_next_request_is_cut_off(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    # A request that arrives whole arms no deadline; the next one, arriving in pieces, does.
    s = await start_stack(aiohttp_server, tmp_path, header_timeout_seconds=0.3)
    try:
        reader, writer = await asyncio.open_connection(*proxy_addr(s))
        writer.write(
            f"GET /v3/company/{REALM}/companyinfo/{REALM} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        assert head.startswith(b"HTTP/1.1 200")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await asyncio.wait_for(reader.readexactly(length), timeout=10)
        writer.write(f"GET /v3/company/{REALM}/companyinfo/{REALM} HTTP/1.1\r\n".encode())
        trickle = asyncio.create_task(_trickle(writer))
        assert await wait_closed_by_server(reader) == b""
        trickle.cancel()
        writer.close()
        closed = s.metric(
            "qbo_gateway_connections_closed_total",
            {"listener": "proxy", "reason": "header_timeout"},
        )
        assert closed == 1
    finally:
        await stop_stack(s)


async def _trickle(writer: asyncio.StreamWriter) -> None:
    # A slow caller's pace; the server's deadline, not this loop, ends the connection.
    while True:
        writer.write(b"X")
        await writer.drain()
        await asyncio.sleep(0.05)


async def test_open_connections_are_bounded_and_the_longest_idle_goes_first(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    s = await start_stack(aiohttp_server, tmp_path, proxy_max_connections=3)
    try:
        host, port = proxy_addr(s)
        idle = [await asyncio.open_connection(host, port) for _ in range(3)]
        await _until(lambda: len(s.proxy_server.runner.server.connections) == 3)  # type: ignore[union-attr]
        # A fourth caller gets in; the connection idle the longest (the first) is closed.
        answer = await exchange(
            host,
            port,
            f"GET /v3/company/{REALM}/companyinfo/{REALM} HTTP/1.1\r\nHost: x\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert parse(answer)[0] == 200
        assert await wait_closed_by_server(idle[0][0]) == b""
        assert not idle[1][0].at_eof() and not idle[2][0].at_eof()
        evicted = s.metric(
            "qbo_gateway_connections_closed_total", {"listener": "proxy", "reason": "evicted_idle"}
        )
        assert evicted == 1
        for _, writer in idle:
            writer.close()
    finally:
        await stop_stack(s)


async def _until(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


# --- the read token ---------------------------------------------------------------------

READ_TOKEN = "ops-read-token-0123456789"
GUARDED = ["summary", "dashboard", "alerts", f"business/{REALM}"]
OPEN = ["status-page", "metrics/prometheus"]


@pytest.mark.parametrize("prefix", ["/health", "/integrations/qbo/health"])
async def test_read_token_guards_the_json_health_routes(
    aiohttp_server: Any, tmp_path: Path, prefix: str
) -> None:
    s = await start_stack(aiohttp_server, tmp_path, ops_read_token=READ_TOKEN)
    try:
        for route in GUARDED:
            url = f"{s.ops_url}{prefix}/{route}"
            for auth in (None, "Bearer wrong-token-0123456789", f"Basic {READ_TOKEN}"):
                headers = {"Authorization": auth} if auth else {}
                async with s.session.get(url, headers=headers) as resp:
                    assert resp.status == 401, (route, auth)
                    assert resp.headers["X-QBO-Gateway-Error"] == "GW-UNAUTHENTICATED"
                    assert resp.headers["X-Request-Id"]
                    assert (await resp.json())["Fault"]["Error"][0]["code"] == "9401"
            for token in (READ_TOKEN, "admin-token-for-tests"):
                async with s.session.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200, (route, token)
        for route in OPEN:
            async with s.session.get(f"{s.ops_url}{prefix}/{route}") as resp:
                assert resp.status == 200, route
        for probe in ("/livez", "/readyz", "/healthz", "/metrics"):
            async with s.session.get(f"{s.ops_url}{probe}") as resp:
                assert resp.status == 200, probe
    finally:
        await stop_stack(s)


async def test_without_read_token_the_health_routes_stay_open(stack: Stack) -> None:
    for route in GUARDED:
        async with stack.session.get(f"{stack.ops_url}/health/{route}") as resp:
            assert resp.status == 200, route


def test_check_config_warns_when_health_routes_are_open_on_a_wide_bind(tmp_path: Path) -> None:
    env = {"QBO_STATE_DIR": str(tmp_path), "QBO_OPS_HOST": "0.0.0.0"}
    open_wide = run_cli("check-config", env=env)
    assert open_wide.returncode == 0
    assert "QBO_OPS_READ_TOKEN is unset" in open_wide.stdout + open_wide.stderr
    for quiet in ({"QBO_OPS_READ_TOKEN": READ_TOKEN}, {"QBO_OPS_HOST": "127.0.0.1"}):
        result = run_cli("check-config", env={**env, **quiet})
        assert result.returncode == 0
        assert "QBO_OPS_READ_TOKEN is unset" not in result.stdout + result.stderr


async def test_serve_says_once_that_health_routes_are_open(
    tmp_path: Path, ports: tuple[int, int], client: Any
) -> None:
    proxy_port, ops_port = ports
    env = {
        "QBO_STATE_DIR": str(tmp_path),
        "QBO_PROXY_PORT": str(proxy_port),
        "QBO_OPS_PORT": str(ops_port),
        "QBO_OPS_HOST": "0.0.0.0",
        "QBO_MONITOR_AUTOSTART": "false",
        "QBO_LOG_FORMAT": "json",
    }
    proc = await start_serve(env)
    try:
        await wait_ready(client, f"http://127.0.0.1:{ops_port}/readyz", proc)
        for _ in range(3):
            async with client.get(f"http://127.0.0.1:{ops_port}/health/summary") as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    events = [json.loads(line).get("event") for line in stderr.splitlines() if line.startswith("{")]
    assert events.count("health_routes_open") == 1


async def test_ops_router_refusals_are_faults(stack: Stack) -> None:
    async with stack.session.get(f"{stack.ops_url}/no/such/route") as resp:
        assert resp.status == 404
        assert resp.headers["X-QBO-Gateway-Error"] == "GW-NOT-FOUND"
        assert resp.headers["X-Request-Id"]
        assert (await resp.json())["Fault"]["Error"][0]["code"] == "9404"
    async with stack.session.delete(f"{stack.ops_url}/livez") as resp:
        assert resp.status == 405
        assert "GET" in resp.headers["Allow"]
        assert (await resp.json())["Fault"]["Error"][0]["code"] == "9405"
