"""Real QBO SDKs, unchanged, against a whole gateway and the simulator on real sockets.

python-quickbooks 0.9.12 and node-quickbooks 2.0.50 each read, page through a query, count,
create, sparse-update and batch-create through the gateway; and each meets the gateway's
refusals (a realm the caller may not use, a rate refusal, an open circuit) as its own error
with the gateway's numeric code, never as a crash in the SDK.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from qbo_gateway.simulator import FaultRule
from tests.harness import OTHER_REALM, REALM, Stack, start_stack, stop_stack
from tests.sdk_drivers import SDK, SDKS, Result

pytestmark = pytest.mark.slow

KEY = "sdk-caller-key-0123456789"
MakeStack = Callable[..., Awaitable[Stack]]

# What each SDK raises for a fault: python-quickbooks picks a class from the code's range
# (3001 -> ValidationException, 9xxx -> its base QuickbooksException, 10000 -> Severe...);
# node-quickbooks hands its callback the HTTP client's error with the answer attached.
PY_ERRORS = {"3001": "ValidationException", "10000": "SevereException"}


@pytest.fixture(params=sorted(SDKS))
def sdk(request: pytest.FixtureRequest) -> SDK:
    return SDKS[request.param]


@pytest.fixture
async def make_stack(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[MakeStack]:
    made: list[Stack] = []
    callers = tmp_path / "callers.yaml"
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    callers.write_text(
        f'callers:\n  - name: sdk\n    key_sha256: "{digest}"\n    realms: ["{REALM}"]\n'
    )

    async def build(**overrides: Any) -> Stack:
        s = await start_stack(
            aiohttp_server, tmp_path / f"s{len(made)}", callers_file=callers, **overrides
        )
        made.append(s)
        return s

    yield build
    for s in made:
        await stop_stack(s)


def _start(query: str) -> int:
    match = re.search(r"startposition\s+(\d+)", query)
    assert match is not None, query
    return int(match.group(1))


def assert_refused(sdk: SDK, result: Result, code: str, name: str, status: int) -> None:
    assert result["ok"] is False, result
    assert result["code"] == code, result
    if sdk.name == "python-quickbooks":
        assert result["error"] == PY_ERRORS.get(code, "QuickbooksException"), result
    else:
        assert result["error"] == "AxiosError", result
        assert result["status"] == status and result["gatewayError"] == name, result
        assert result["faultType"] == "GatewayFault", result


async def test_reads_pages_writes_and_batch(sdk: SDK, make_stack: MakeStack) -> None:
    stack = await make_stack()
    steps = [
        {"op": "companyInfo"},
        {"op": "getCustomer", "id": "3"},
        {"op": "findCustomersAll", "limit": 10},
        {"op": "countCustomers"},
        {"op": "createCustomer", "name": "Made by an SDK"},
        {"op": "sparseUpdateCustomer", "id": "1", "syncToken": "0", "name": "Renamed by an SDK"},
        {"op": "batchCreateCustomers", "names": ["Batch One", "Batch Two"]},
    ]
    results = await sdk.run(stack.proxy_url, REALM, KEY, steps)
    assert [r["ok"] for r in results] == [True] * len(steps), results
    info, customer, every, count, created, updated, batch = (r["body"] for r in results)
    assert info["CompanyName"] == f"Sandbox Company {REALM}"
    assert customer["Id"] == "3" and customer["DisplayName"] == "Customer 3"
    rows = every["QueryResponse"]["Customer"]
    assert [row["Id"] for row in rows] == [str(n) for n in range(1, 26)]
    assert count["QueryResponse"]["totalCount"] == 25
    assert created["Id"] == "26" and created["DisplayName"] == "Made by an SDK"
    # A sparse update changes what was sent and keeps the rest.
    assert updated["SyncToken"] == "1" and updated["DisplayName"] == "Renamed by an SDK"
    assert updated["PrimaryEmailAddr"] == {"Address": "customer1@example.com"}
    assert [c["DisplayName"] for c in batch["successes"]] == ["Batch One", "Batch Two"]
    assert batch["faults"] == 0
    seen = stack.sim.api_requests
    queries = [
        (r.query.get("query") or r.body.decode()).lower()
        for r in seen
        if r.path == f"/v3/company/{REALM}/query"
    ]
    pages = [q for q in queries if "count(*)" not in q]
    # 25 rows, 10 a page: three pages, each asking from where the last one stopped.
    assert [_start(q) for q in pages] == [1, 11, 21], pages
    assert any(r.path == f"/v3/company/{REALM}/batch" for r in seen)
    # The caller key is the gateway's business: QBO saw the realm's own token.
    assert all(KEY not in r.headers.get("Authorization", "") for r in seen)


async def test_forbidden_realm(sdk: SDK, make_stack: MakeStack) -> None:
    stack = await make_stack()
    (refused,) = await sdk.run(stack.proxy_url, OTHER_REALM, KEY, [{"op": "companyInfo"}])
    assert_refused(sdk, refused, "9403", "GW-FORBIDDEN", 403)
    (wrong_key,) = await sdk.run(stack.proxy_url, REALM, "not-the-key", [{"op": "companyInfo"}])
    assert wrong_key["ok"] is False
    # A 401 is authentication either way: python-quickbooks raises before reading the body.
    assert wrong_key["code"] == ("401" if sdk.name == "python-quickbooks" else "9401")
    assert stack.sim.api_requests == []


async def test_rate_limited(sdk: SDK, make_stack: MakeStack) -> None:
    stack = await make_stack(throttle_cooldown_seconds=60, cache_stale_seconds=0)
    stack.sim.inject(FaultRule(kind="throttle", times=1, path="companyinfo"))
    (throttled,) = await sdk.run(stack.proxy_url, REALM, KEY, [{"op": "companyInfo"}])
    assert throttled["ok"] is False and throttled["code"] == "3001"  # QBO's own, passed on
    await stack.gateway.admitter.drain()
    (refused,) = await sdk.run(stack.proxy_url, REALM, KEY, [{"op": "getCustomer", "id": "1"}])
    assert_refused(sdk, refused, "3001", "GW-RATE-LIMITED", 429)
    assert len(stack.sim.api_requests) == 1  # the cool-down kept the second call home


async def test_circuit_open(sdk: SDK, make_stack: MakeStack) -> None:
    stack = await make_stack(
        breaker_failure_threshold=2, breaker_recovery_seconds=300, cache_stale_seconds=0
    )
    stack.sim.inject(FaultRule(kind="server_error", path="customer"))
    for n in range(2):
        (failed,) = await sdk.run(
            stack.proxy_url, REALM, KEY, [{"op": "createCustomer", "name": f"Fails {n}"}]
        )
        assert failed["ok"] is False and failed["code"] == "10000"  # QBO's 500, passed on
        await stack.gateway.admitter.drain()
    (refused,) = await sdk.run(stack.proxy_url, REALM, KEY, [{"op": "companyInfo"}])
    assert_refused(sdk, refused, "9503", "GW-CIRCUIT-OPEN", 503)
    assert len(stack.sim.api_requests) == 2
