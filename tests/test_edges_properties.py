"""Properties of the proxy's edge, for any request target and header set (hypothesis).

A whole gateway and the simulator run on real sockets in a background thread; each
generated request is written byte for byte on a plain socket, so nothing normalizes it on
the way. Whatever was sent:

- the gateway contacts no host but QBO's (a trap server, named in targets and headers,
  sees nothing);
- QBO sees only the realm the caller was granted, with that realm's own token;
- the caller's key reaches QBO in no header, whatever its name, and no `Cookie` or
  `Proxy-Authorization` header reaches QBO;
- the answer is never a 500, always carries `X-Request-Id`, and a gateway-made answer has
  the fault shape with a numeric code.

Example counts are set for CI (`EXAMPLES` per property); hypothesis's database is off so
runs leave nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from qbo_gateway.app import Gateway, build_gateway
from qbo_gateway.simulator import Simulator
from tests.harness import (
    CLIENT_ID,
    CLIENT_SECRET,
    OTHER_REALM,
    REALM,
    EdgeTestServer,
    settings_for,
)

EXAMPLES = 150
CALLER_KEY = "prop-caller-key-5f1b2c3d4e5f60718293"
COOKIE = "session=prop-cookie-value-0123456789"
PROXY_CRED = "Basic cHJvcDpwcm94eS1jcmVkZW50aWFs"


@dataclass
class World:
    """The servers of one module run, reachable from the test's thread."""

    proxy: tuple[str, int]
    trap_port: int
    sim: Simulator
    gateway: Gateway
    realm_token: dict[str, str]
    trap_hits: list[str] = field(default_factory=list)


def _serve(world_ready: threading.Event, box: dict[str, Any], state_dir: Path) -> None:
    loop = asyncio.new_event_loop()
    box["loop"] = loop

    async def start() -> None:
        trap_hits: list[str] = []

        async def trap(request: web.Request) -> web.Response:
            trap_hits.append(request.path_qs)
            return web.Response(text="trap")

        trap_app = web.Application()
        trap_app.router.add_route("*", "/{tail:.*}", trap)
        trap_server = TestServer(trap_app)
        await trap_server.start_server()
        sim = Simulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, keep_requests=None)
        pairs = {r: sim.add_realm(r) for r in (REALM, OTHER_REALM)}
        sim_server = TestServer(sim.make_app())
        await sim_server.start_server()
        callers = state_dir / "callers.yaml"
        digest = hashlib.sha256(CALLER_KEY.encode()).hexdigest()
        callers.write_text(
            f'callers:\n  - name: a\n    key_sha256: "{digest}"\n    realms: ["{REALM}"]\n'
        )
        sim_url = str(sim_server.make_url("")).rstrip("/")
        settings = settings_for(
            sim_url,
            state_dir / "state",
            callers_file=callers,
            rate_limit_per_second=100_000,
            rate_limit_per_minute=1_000_000,
            retry_budget_ratio=0.0,
        )
        gateway = await build_gateway(settings, registry=CollectorRegistry())
        for realm, pair in pairs.items():
            await gateway.tokens.import_tokens(
                realm, pair.refresh_token, pair.access_token, pair.access_expires_at, force=True
            )
        proxy = EdgeTestServer(gateway.proxy_app)
        await proxy.start_server()
        box["servers"] = [proxy, sim_server, trap_server]
        box["world"] = World(
            proxy=(str(proxy.host), int(proxy.port or 0)),
            trap_port=int(trap_server.port or 0),
            sim=sim,
            gateway=gateway,
            realm_token={r: p.access_token for r, p in pairs.items()},
            trap_hits=trap_hits,
        )

    loop.run_until_complete(start())
    world_ready.set()
    loop.run_forever()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    box: dict[str, Any] = {}
    ready = threading.Event()
    thread = threading.Thread(
        target=_serve, args=(ready, box, tmp_path_factory.mktemp("props")), daemon=True
    )
    thread.start()
    assert ready.wait(30), "the gateway never started"
    yield box["world"]
    loop: asyncio.AbstractEventLoop = box["loop"]

    async def stop() -> None:
        for server in box["servers"]:
            await server.close()
        await box["world"].gateway.close()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def send(world: World, raw: bytes) -> bytes:
    with socket.create_connection(world.proxy, timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def check_answer(answer: bytes) -> int:
    while answer.startswith(b"HTTP/1.1 100 "):  # an interim answer to `Expect: 100-continue`
        answer = answer.partition(b"\r\n\r\n")[2]
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {n.strip().lower(): v.strip() for n, _, v in (x.partition(":") for x in lines[1:])}
    assert status != 500, answer[:500]
    assert headers.get("x-request-id"), answer[:500]
    if "x-qbo-gateway-error" in headers:
        doc = json.loads(body.split(b"\r\n", 1)[-1] if b"\r\n" in body[:8] else body)
        assert doc["Fault"]["type"] == "GatewayFault"
        assert doc["Fault"]["Error"][0]["code"].isdigit()
    return status


def check_upstream(world: World, seen_before: int) -> None:
    assert world.trap_hits == []
    for req in world.sim.api_requests[seen_before:]:
        assert req.path.startswith(f"/v3/company/{REALM}/"), req.path
        assert req.headers.get("Authorization") == f"Bearer {world.realm_token[REALM]}"
        text = json.dumps([req.path, req.query, req.headers]) + req.body.decode("latin-1")
        assert CALLER_KEY not in text  # in no header, whatever its name
        assert "Cookie" not in req.headers and "Proxy-Authorization" not in req.headers


VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
PIECES = st.sampled_from(
    [
        f"/v3/company/{REALM}/",
        f"/v3/company/{OTHER_REALM}/",
        "/v3/company/",
        "companyinfo/" + REALM,
        "query?query=select%20*%20from%20Customer",
        "..",
        "%2e%2e",
        "%2F",
        "%5c",
        "%00",
        "%0a",
        "//",
        "/",
        "@",
        "#",
        "?",
        "&",
        ";",
        "\\",
        "{trap}",
        "http://{trap}/",
        "batch",
        "reports/ProfitAndLoss",
    ]
)


def target_strategy() -> st.SearchStrategy[str]:
    piece = st.one_of(PIECES, st.text(VISIBLE, min_size=1, max_size=12))
    return st.lists(piece, min_size=1, max_size=6).map("".join)


def request_bytes(method: str, target: str, headers: list[tuple[str, str]], trap: str) -> bytes:
    target = target.replace("{trap}", trap)
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway"]
    lines += [f"{n}: {v.replace('{trap}', trap)}" for n, v in headers]
    body = b'{"Name":"x"}' if method == "POST" else b""
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


_PROP = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@_PROP
@given(
    method=st.sampled_from(["GET", "POST", "GET", "POST", "PUT", "TRACE", "CONNECT", "G\x01T"]),
    target=target_strategy(),
    key_in=st.sampled_from(["Authorization", "X-QBO-Gateway-Key"]),
)
def test_any_target(world: World, method: str, target: str, key_in: str) -> None:
    before = len(world.sim.api_requests)
    auth = f"Bearer {CALLER_KEY}" if key_in == "Authorization" else CALLER_KEY
    trap = f"127.0.0.1:{world.trap_port}"
    check_answer(send(world, request_bytes(method, target, [(key_in, auth)], trap)))
    check_upstream(world, before)


HEADER_NAMES = st.sampled_from(
    [
        "Host",
        "X-Forwarded-Host",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "Forwarded",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-HTTP-Method-Override",
        "Via",
        "Connection",
        "Upgrade",
        "TE",
        "Keep-Alive",
        "Cookie",
        "Proxy-Authorization",
        "Authorization",
        "X-QBO-Gateway-Key",
        "Accept",
        "Accept-Encoding",
        "Cache-Control",
        "X-Request-Id",
        "Expect",
    ]
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            "{trap}",
            "http://{trap}/v3/company/" + OTHER_REALM,
            f"Bearer {CALLER_KEY}",
            CALLER_KEY,
            COOKIE,
            PROXY_CRED,
            "close, Authorization, X-QBO-Gateway-Key",
            "keep-alive, Cookie",
            "websocket",
            "100-continue",
            "no-cache",
            "gzip",
            OTHER_REALM,
        ]
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)


@_PROP
@given(
    method=st.sampled_from(["GET", "POST"]),
    rest=st.sampled_from(
        [
            f"companyinfo/{REALM}",
            "query?query=select%20*%20from%20Customer",
            f"companyinfo/{OTHER_REALM}",
        ]
    ),
    realm=st.sampled_from([REALM, OTHER_REALM]),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8),
    key_first=st.booleans(),
)
def test_any_headers(
    world: World,
    method: str,
    rest: str,
    realm: str,
    headers: list[tuple[str, str]],
    key_first: bool,
) -> None:
    before = len(world.sim.api_requests)
    trap = f"127.0.0.1:{world.trap_port}"
    key = [("X-QBO-Gateway-Key", CALLER_KEY)]
    sent = key + headers if key_first else headers + key
    raw = request_bytes(method, f"/v3/company/{realm}/{rest}", sent, trap)
    status = check_answer(send(world, raw))
    check_upstream(world, before)
    if realm == OTHER_REALM:
        assert 400 <= status < 500, status  # refused by the gateway, never QBO's answer
