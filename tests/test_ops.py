"""The ops listener through the real composition root: probes, admin actions, connect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.fernet import Fernet

from qbo_gateway.simulator import FaultRule
from tests.harness import REALM, Stack, start_stack, stop_stack
from tests.redis_server import free_port

ADMIN = {"Authorization": "Bearer admin-token-for-tests"}


@pytest.fixture
async def stack(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    s = await start_stack(aiohttp_server, tmp_path)
    yield s
    await stop_stack(s)


async def test_livez_and_readyz(stack: Stack) -> None:
    async with stack.session.get(stack.ops_url + "/livez") as resp:
        assert resp.status == 200
    for path in ("/readyz", "/healthz"):
        async with stack.session.get(stack.ops_url + path) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ready"


async def test_readyz_verbose_lists_components_and_turns_503_when_draining(stack: Stack) -> None:
    async with stack.session.get(stack.ops_url + "/readyz?verbose") as resp:
        doc = await resp.json()
    assert {"settings", "token_keys", "state_backend", "draining"} <= set(doc["components"])
    assert doc["components"]["state_backend"]["ok"] is True
    stack.gateway.readiness.draining = True
    async with stack.session.get(stack.ops_url + "/readyz?verbose") as resp:
        assert resp.status == 503
        assert (await resp.json())["components"]["draining"]["ok"] is False
    async with stack.session.get(stack.ops_url + "/livez") as resp:
        assert resp.status == 200


async def test_metrics_on_both_paths(stack: Stack) -> None:
    for path in ("/metrics", "/health/metrics/prometheus"):
        async with stack.session.get(stack.ops_url + path) as resp:
            assert resp.status == 200
            assert "qbo_gateway_build_info" in await resp.text()


async def test_admin_refresh_needs_the_admin_token(stack: Stack) -> None:
    url = f"{stack.ops_url}/admin/realms/{REALM}/refresh"
    async with stack.session.post(url) as resp:
        assert resp.status == 401
    async with stack.session.post(url, headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401
    calls = stack.sim.token_calls
    async with stack.session.post(url, headers=ADMIN) as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["refreshed"] is True and doc["needs_reconnect"] is False
    assert stack.sim.token_calls == calls + 1
    assert stack.pair.access_token not in str(doc)


async def test_reconnect_required_then_admin_refresh_after_import(stack: Stack) -> None:
    stack.sim.expire_access_token(REALM)
    stack.sim.inject(FaultRule(target="token", kind="invalid_grant"))
    async with stack.session.get(stack.api(f"companyinfo/{REALM}")) as resp:
        assert resp.status == 401
        assert resp.headers["X-QBO-Gateway-Error"] == "GW-RECONNECT-REQUIRED"
    calls = stack.sim.token_calls
    for _ in range(20):
        async with stack.session.get(stack.api("query?query=select%20*%20from%20Customer")) as r:
            assert r.status == 401
    assert stack.sim.token_calls == calls  # no refresh storm on a dead token
    stack.sim.clear_faults()
    fresh = stack.sim.issue_tokens(REALM)
    await stack.gateway.tokens.import_tokens(REALM, fresh.refresh_token, force=True)
    url = f"{stack.ops_url}/admin/realms/{REALM}/refresh"
    async with stack.session.post(url, headers=ADMIN) as resp:
        assert resp.status == 200
    async with stack.session.get(stack.api(f"companyinfo/{REALM}")) as resp:
        assert resp.status == 200


async def test_expired_access_token_is_refreshed_and_replayed_once(stack: Stack) -> None:
    stack.sim.expire_access_token(REALM)  # QBO answers 401/3200 to the stored token
    body = {"DisplayName": "Replayed"}
    async with stack.session.post(stack.api("customer"), json=body) as resp:
        assert resp.status == 200
    writes = [r for r in stack.sim.api_requests if r.path.endswith("/customer")]
    assert len(writes) == 2  # the 401, then the replay with the new token
    assert writes[0].body == writes[1].body
    assert writes[0].query["requestid"] == writes[1].query["requestid"]
    assert writes[1].headers["Authorization"] != writes[0].headers["Authorization"]
    assert stack.sim.token_calls == 1


async def test_second_401_goes_back_unchanged(stack: Stack) -> None:
    stack.sim.inject(FaultRule(kind="unauthorized", path="companyinfo"))
    async with stack.session.get(stack.api(f"companyinfo/{REALM}")) as resp:
        assert resp.status == 401
        assert "X-QBO-Gateway-Error" not in resp.headers
        doc = await resp.json()
    assert doc["fault"]["error"][0]["code"] == "3200"
    assert len(stack.sim.api_requests) == 2


async def test_connect_flow_stores_a_new_realm(stack: Stack) -> None:
    async with stack.session.get(stack.ops_url + "/oauth/connect", allow_redirects=False) as resp:
        assert resp.status == 401
    async with stack.session.get(
        stack.ops_url + "/oauth/connect", headers=ADMIN, allow_redirects=False
    ) as resp:
        assert resp.status == 302
        authorize = resp.headers["Location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"]
    # Play Intuit's consent screen: the simulator redirects back with code, state and realm.
    async with stack.session.get(
        authorize.replace(urlsplit(authorize).netloc, urlsplit(stack.sim_url).netloc),
        allow_redirects=False,
    ) as resp:
        callback = resp.headers["Location"]
    callback = callback.replace(urlsplit(callback).netloc, urlsplit(stack.ops_url).netloc)
    async with stack.session.get(callback, allow_redirects=False) as resp:
        assert resp.status == 200, await resp.text()
    realm = parse_qs(urlsplit(callback).query)["realmId"][0]
    assert await stack.gateway.tokens.status(realm) is not None
    async with stack.session.get(stack.api(f"companyinfo/{realm}", realm=realm)) as resp:
        assert resp.status == 200
    async with stack.session.get(callback, allow_redirects=False) as resp:
        assert resp.status == 400  # the state is single-use
        assert "used or expired state" in await resp.text()


async def test_readyz_verbose_warns_when_redis_keeps_nothing_on_disk(
    aiohttp_server: Any, tmp_path: Path, redis_server: Any, redis_prefix: str
) -> None:
    s = await start_stack(
        aiohttp_server,
        tmp_path,
        redis_url=redis_server.url,
        token_keys=Fernet.generate_key().decode(),
        redis_prefix=redis_prefix,
    )
    try:
        async with s.session.get(s.ops_url + "/readyz?verbose") as resp:
            assert resp.status == 200
            backend = (await resp.json())["components"]["state_backend"]
        assert backend["ok"] is True
        # The test server runs with no AOF and no RDB: a restart would lose every realm.
        assert "warning" in backend
        assert "disk" in backend["warning"].lower() or "persist" in backend["warning"].lower()
    finally:
        await stop_stack(s)


DOCUMENTED_METRICS = (  # the README lists these; dashboards and alert rules use them
    "qbo_gateway_requests_total",
    "qbo_gateway_request_duration_seconds",
    "qbo_gateway_upstream_request_duration_seconds",
    "qbo_gateway_token_refreshes_total",
    "qbo_gateway_circuit_transitions_total",
    "qbo_gateway_realms",
    "qbo_gateway_rate_limited_total",
    "qbo_gateway_stale_served_total",
    "qbo_gateway_alerts_active",
    "qbo_gateway_state_backend_up",
    "qbo_gateway_build_info",
)


async def test_every_documented_metric_is_exported_without_realm_ids(stack: Stack) -> None:
    async with stack.session.get(stack.api(f"companyinfo/{REALM}")) as resp:
        assert resp.status == 200
    async with stack.session.post(
        f"{stack.ops_url}/admin/realms/{REALM}/refresh", headers=ADMIN
    ) as resp:
        assert resp.status == 200
    await stack.gateway.health.flush()
    await stack.gateway.health.cycle.housekeeping()
    async with stack.session.get(stack.ops_url + "/metrics") as resp:
        text = await resp.text()
    for name in DOCUMENTED_METRICS:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'qbo_gateway_realms{status="healthy"} 1.0' in text
    assert 'qbo_gateway_token_refreshes_total{result="success"} 1.0' in text
    assert REALM not in text


async def test_replica_that_never_reached_redis_is_not_ready(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    s = await start_stack(
        aiohttp_server,
        tmp_path,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        token_keys=Fernet.generate_key().decode(),
        seed=False,
    )
    try:
        async with s.session.get(s.ops_url + "/readyz?verbose") as resp:
            assert resp.status == 503
            doc = await resp.json()
        assert doc["components"]["state_backend"]["ok"] is False
        async with s.session.get(s.ops_url + "/livez") as resp:
            assert resp.status == 200  # not ready, but alive: no restart loop
        async with s.session.get(s.api(f"companyinfo/{REALM}")) as resp:
            assert resp.status == 502
            assert resp.headers["X-QBO-Gateway-Error"] == "GW-UPSTREAM-UNAVAILABLE"
            assert "token store is unreachable" in await resp.text()
        assert s.sim.api_requests == []
    finally:
        await stop_stack(s)
