"""Realm lifecycle over the ops listener, through a whole gateway and the simulator.

List (paged), show, import (refusing to overwrite without force), remove, revoke at Intuit,
and connect links for a new realm or to reconnect a named one, which send the person back
to an allowed `return_to` with the outcome. Every route is an admin action, and no answer
carries a token.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

import qbo_gateway.commands.tokens as token_cli
from qbo_gateway.commands.connect import connect
from qbo_gateway.commands.realm_link import tokens_link
from qbo_gateway.simulator import FaultRule
from tests.harness import OTHER_REALM, REALM, Stack, settings_for, start_stack, stop_stack

ADMIN = {"Authorization": "Bearer admin-token-for-tests"}
RETURN = "https://app.example.com/onboarding"
REALMS = ["1000000000000001", "1000000000000002", "1000000000000003"]


@pytest.fixture
async def stack(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    s = await start_stack(aiohttp_server, tmp_path, connect_return_urls=f"{RETURN}, http://x.test")
    yield s
    await stop_stack(s)


async def call(
    stack: Stack, method: str, path: str, body: Any = None, headers: Any = ADMIN
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    async with stack.session.request(
        method, stack.ops_url + path, json=body, headers=headers
    ) as resp:
        text = await resp.text()
        doc = await resp.json(content_type=None) if text else None
        return resp.status, doc, resp.headers


def fault_code(doc: Any) -> str:
    return str(doc["Fault"]["Error"][0]["code"])


ROUTES = [
    ("GET", "/admin/realms"),
    ("GET", f"/admin/realms/{REALM}"),
    ("POST", "/admin/realms"),
    ("DELETE", f"/admin/realms/{REALM}"),
    ("POST", f"/admin/realms/{REALM}/revoke"),
    ("POST", "/admin/realms/connect-link"),
    ("POST", f"/admin/realms/{REALM}/connect-link"),
    ("POST", f"/admin/realms/{REALM}/reset-circuit"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_needs_the_admin_token(stack: Stack, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, doc, resp_headers = await call(stack, method, path, {}, headers)
        assert status == 401
        assert resp_headers["X-QBO-Gateway-Error"] == "GW-UNAUTHENTICATED"
        assert fault_code(doc) == "9401"
    status, _, _ = await call(stack, "GET", f"/admin/realms/{REALM}")
    assert status == 200  # the realm was not touched by the refused calls


async def test_import_list_pages_and_show(stack: Stack) -> None:
    for n, realm in enumerate(REALMS):
        body = {"realm_id": realm, "refresh_token": f"refresh-secret-{n}"}
        status, doc, _ = await call(stack, "POST", "/admin/realms", body)
        assert status == 201 and doc["realm_id"] == realm and doc["version"] == 1
        assert doc["status"] == "access_expired"  # no access token given: refreshed on use
    status, first, _ = await call(stack, "GET", "/admin/realms?limit=3")
    assert status == 200 and first["total"] == 4
    assert [r["realm_id"] for r in first["realms"]] == REALMS
    assert first["next_after"] == REALMS[2]
    status, second, _ = await call(stack, "GET", f"/admin/realms?limit=3&after={REALMS[2]}")
    assert [r["realm_id"] for r in second["realms"]] == [REALM]
    assert second["next_after"] is None and second["realms"][0]["status"] == "ok"
    status, page, _ = await call(stack, "GET", f"/admin/realms?limit=2&after={REALMS[0]}")
    assert [r["realm_id"] for r in page["realms"]] == REALMS[1:]
    assert page["next_after"] == REALMS[2]
    status, one, _ = await call(stack, "GET", f"/admin/realms/{REALM}")
    assert one["needs_reconnect"] is False and one["access_expires_at"].endswith("Z")
    assert "refresh-secret" not in str(first) + str(one)
    assert stack.pair.refresh_token not in str(first) and stack.pair.access_token not in str(one)
    status, doc, headers = await call(stack, "GET", f"/admin/realms/{OTHER_REALM}")
    assert status == 404 and fault_code(doc) == "9404"
    assert headers["X-QBO-Gateway-Error"] == "GW-UNKNOWN-REALM"


async def test_import_refuses_to_overwrite_without_force(stack: Stack) -> None:
    body = {"realm_id": REALM, "refresh_token": "another"}
    status, doc, headers = await call(stack, "POST", "/admin/realms", body)
    assert status == 409 and fault_code(doc) == "9409"
    assert headers["X-QBO-Gateway-Error"] == "GW-REALM-EXISTS"
    status, doc, _ = await call(stack, "POST", "/admin/realms", {**body, "force": True})
    assert status == 201 and doc["version"] == 2
    for bad in ({"realm_id": "12ab", "refresh_token": "x"}, {"realm_id": "1"}, ["x"]):
        status, doc, _ = await call(stack, "POST", "/admin/realms", bad)
        assert status == 400 and fault_code(doc) == "9400", bad


async def test_remove_forgets_the_realm_here(stack: Stack) -> None:
    status, doc, _ = await call(stack, "DELETE", f"/admin/realms/{REALM}")
    assert status == 200 and doc == {"realm_id": REALM, "removed": True}
    async with stack.session.get(stack.api(f"companyinfo/{REALM}")) as resp:
        assert resp.headers["X-QBO-Gateway-Error"] == "GW-UNKNOWN-REALM"
    status, doc, _ = await call(stack, "DELETE", f"/admin/realms/{REALM}")
    assert status == 404 and fault_code(doc) == "9404"
    assert stack.sim.realms[REALM].refresh_token is not None  # Intuit was not told


async def test_revoke_tells_intuit_then_forgets(stack: Stack) -> None:
    status, doc, _ = await call(stack, "POST", f"/admin/realms/{REALM}/revoke")
    assert status == 200 and doc["removed"] is True and doc["intuit"] == "revoked"
    assert stack.sim.realms[REALM].refresh_token is None  # the grant is gone at Intuit
    status, doc, _ = await call(stack, "POST", f"/admin/realms/{REALM}/revoke")
    assert status == 404 and fault_code(doc) == "9404"


async def follow_link(stack: Stack, url: str, *, choose: str | None = None) -> str:
    """The person's browser: Intuit's consent (the simulator), then the gateway's callback.
    `choose` is the company picked at Intuit. Returns where the callback sends them."""
    if choose:
        url += "&" + urlencode({"realm_id": choose})
    async with stack.session.get(url, allow_redirects=False) as resp:
        callback = urlsplit(resp.headers["Location"])
    async with stack.session.get(
        f"{stack.ops_url}{callback.path}?{callback.query}", allow_redirects=False
    ) as resp:
        assert resp.status == 303, await resp.text()
        return resp.headers["Location"]


def outcome(location: str) -> dict[str, str]:
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == RETURN
    return {k: v[0] for k, v in parse_qs(parts.query).items()}


async def test_connect_link_for_a_new_realm_returns_the_person(stack: Stack) -> None:
    status, doc, _ = await call(stack, "POST", "/admin/realms/connect-link", {"return_to": RETURN})
    assert status == 200 and doc["realm_id"] is None and doc["expires_in"] > 0
    result = outcome(await follow_link(stack, doc["url"]))
    assert result["outcome"] == "connected"
    status, shown, _ = await call(stack, "GET", f"/admin/realms/{result['realm_id']}")
    assert status == 200 and shown["status"] == "ok"


async def test_reconnect_link_is_bound_to_its_realm(stack: Stack) -> None:
    link = f"/admin/realms/{REALM}/connect-link"
    status, doc, _ = await call(stack, "POST", link, {"return_to": f"{RETURN}?step=2"})
    assert doc["realm_id"] == REALM
    wrong = outcome(await follow_link(stack, doc["url"], choose=OTHER_REALM))
    assert wrong == {"step": "2", "outcome": "failed", "realm_id": OTHER_REALM}
    status, _, _ = await call(stack, "GET", f"/admin/realms/{OTHER_REALM}")
    assert status == 404  # nothing stored for the company that was not asked for
    status, doc, _ = await call(stack, "POST", link, {"return_to": RETURN})
    right = outcome(await follow_link(stack, doc["url"], choose=REALM))
    assert right == {"outcome": "connected", "realm_id": REALM}
    status, shown, _ = await call(stack, "GET", f"/admin/realms/{REALM}")
    assert shown["version"] == 2
    status, doc, _ = await call(stack, "POST", f"/admin/realms/{OTHER_REALM}/connect-link")
    assert status == 404 and fault_code(doc) == "9404"


async def test_denied_consent_returns_the_person(stack: Stack) -> None:
    status, doc, _ = await call(stack, "POST", "/admin/realms/connect-link", {"return_to": RETURN})
    assert status == 200
    state = parse_qs(urlsplit(doc["url"]).query)["state"][0]
    query = urlencode({"error": "access_denied", "state": state})
    async with stack.session.get(
        f"{stack.ops_url}/oauth/callback?{query}", allow_redirects=False
    ) as resp:
        assert resp.status == 303
        assert outcome(resp.headers["Location"]) == {"outcome": "denied"}


@pytest.mark.parametrize(
    "return_to",
    [
        "https://evil.example.com/onboarding",
        "https://app.example.com/onboardingX",
        "https://app.example.com:8443/onboarding",
        "http://app.example.com/onboarding",
        "https://user@app.example.com/onboarding",
        "javascript:alert(1)",
    ],
)
async def test_return_to_must_be_on_the_allow_list(stack: Stack, return_to: str) -> None:
    body = {"return_to": return_to}
    status, doc, _ = await call(stack, "POST", "/admin/realms/connect-link", body)
    assert status == 400 and fault_code(doc) == "9400"


async def test_return_to_below_an_allowed_path_is_accepted(stack: Stack) -> None:
    for allowed in (f"{RETURN}/done?x=1", "http://x.test/anything"):
        status, doc, _ = await call(
            stack, "POST", "/admin/realms/connect-link", {"return_to": allowed}
        )
        assert status == 200, doc


async def test_cli_twins(stack: Stack, tmp_path: Path) -> None:
    settings = settings_for(stack.sim_url, tmp_path / "state", admin_token="admin-token-for-tests")
    out, err = io.StringIO(), io.StringIO()
    code = await tokens_link(
        settings, realm_id=REALM, return_to=RETURN, ops_url=stack.ops_url, out=out, err=err
    )
    assert code == 0, err.getvalue()
    assert outcome(await follow_link(stack, out.getvalue().strip(), choose=REALM)) == {
        "outcome": "connected",
        "realm_id": REALM,
    }
    refused = io.StringIO()
    bad = {"return_to": "https://evil.example.com/", "ops_url": stack.ops_url}
    assert await tokens_link(settings, out=io.StringIO(), err=refused, **bad) == 1
    assert "QBO_CONNECT_RETURN_URLS" in refused.getvalue()
    no_admin = settings_for(stack.sim_url, tmp_path / "state", admin_token=None)
    assert await tokens_link(no_admin, ops_url=stack.ops_url, err=io.StringIO()) == 2
    for realm in REALMS[:2]:
        assert (
            await token_cli.tokens_import(
                settings, realm_id=realm, refresh_token="r", out=io.StringIO(), err=io.StringIO()
            )
            == 0
        )
    listed, more = io.StringIO(), io.StringIO()
    assert await token_cli.tokens_list(settings, limit=2, out=listed, err=more) == 0
    assert REALMS[1] in listed.getvalue() and REALM not in listed.getvalue()
    assert f"--after {REALMS[1]}" in more.getvalue()
    rest = io.StringIO()
    assert await token_cli.tokens_list(settings, as_json=True, after=REALMS[1], out=rest) == 0
    assert [r["realm_id"] for r in json.loads(rest.getvalue())] == [REALM]
    gone = io.StringIO()
    assert await token_cli.tokens_remove(settings, realm_id=REALM, out=gone) == 0
    assert f"removed realm {REALM}" in gone.getvalue()
    assert await token_cli.tokens_remove(settings, realm_id=REALM, err=io.StringIO()) == 1


async def test_no_connect_link_without_app_credentials(aiohttp_server: Any, tmp_path: Path) -> None:
    s = await start_stack(aiohttp_server, tmp_path, client_id="", client_secret="")
    try:
        for path in ("/admin/realms/connect-link", f"/admin/realms/{REALM}/connect-link"):
            status, doc, headers = await call(s, "POST", path)
            assert status == 503 and fault_code(doc) == "9501"
            assert headers["X-QBO-Gateway-Error"] == "GW-NOT-CONFIGURED"
            assert "QBO_CLIENT_ID" in doc["Fault"]["Error"][0]["Detail"]
        async with s.session.get(
            s.ops_url + "/oauth/connect", headers=ADMIN, allow_redirects=False
        ) as resp:
            assert resp.status == 503 and "QBO_CLIENT_ID" in await resp.text()
        err = io.StringIO()
        settings = settings_for(s.sim_url, tmp_path / "cli", client_id="", client_secret="")
        assert await connect(settings, out=io.StringIO(), err=err) == 2
        assert "QBO_CLIENT_ID" in err.getvalue()
    finally:
        await stop_stack(s)


async def test_reset_circuit_lets_requests_through_at_once(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    s = await start_stack(
        aiohttp_server,
        tmp_path,
        breaker_failure_threshold=1,
        breaker_recovery_seconds=300,
        cache_stale_seconds=0,
    )
    try:
        s.sim.inject(FaultRule(kind="server_error", path="customer", times=1))
        async with s.session.post(s.api("customer"), json={"DisplayName": "x"}) as resp:
            assert resp.status == 500
        await s.gateway.admitter.drain()
        async with s.session.get(s.api(f"companyinfo/{REALM}")) as resp:
            assert resp.headers["X-QBO-Gateway-Error"] == "GW-CIRCUIT-OPEN"
        status, doc, _ = await call(s, "POST", f"/admin/realms/{REALM}/reset-circuit")
        assert status == 200 and doc == {"realm_id": REALM, "breaker": "closed"}
        async with s.session.get(s.api(f"companyinfo/{REALM}")) as resp:
            assert resp.status == 200
        assert s.metric("qbo_gateway_circuit_transitions_total", {"to": "closed"}) == 1
        status, doc, _ = await call(s, "POST", f"/admin/realms/{OTHER_REALM}/reset-circuit")
        assert status == 404 and fault_code(doc) == "9404"
    finally:
        await stop_stack(s)
