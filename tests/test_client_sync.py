"""QBOGatewaySyncClient: the blocking facade, against a whole gateway on real sockets.

The gateway under test runs on the test's event loop, so the sync calls are made from other
threads (as a sync service's worker threads would): `asyncio.to_thread` for plain calls, and
a thread running its own event loop for the "called from inside a running loop" case, where
`asyncio.run` would refuse.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from qbo_gateway.client import (
    CircuitOpen,
    GatewayUnreachable,
    QBOFault,
    QBOResponse,
    QueryResult,
    UnknownRealm,
)
from qbo_gateway.client.sync import QBOGatewaySyncClient
from qbo_gateway.simulator import FaultRule
from tests.harness import OTHER_REALM, REALM, Stack, start_stack, stop_stack
from tests.redis_server import free_port

COMPANY = f"companyinfo/{REALM}"
T = TypeVar("T")


@pytest.fixture
async def stack(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    s = await start_stack(
        aiohttp_server,
        tmp_path,
        breaker_failure_threshold=2,
        breaker_recovery_seconds=300,
        cache_stale_seconds=0,
    )
    yield s
    await stop_stack(s)


@pytest.fixture
async def sync_client(stack: Stack) -> AsyncIterator[QBOGatewaySyncClient]:
    client = QBOGatewaySyncClient(stack.proxy_url, stack.ops_url)
    yield client
    await asyncio.to_thread(client.close)


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_make_qbo_request_and_query(stack: Stack, sync_client: QBOGatewaySyncClient) -> None:
    response = await off_loop(sync_client.make_qbo_request, REALM, COMPANY, request_id="sync-1")
    assert isinstance(response, QBOResponse)
    assert response["CompanyInfo"]["Id"] == "1"
    assert response.request_id == "sync-1" and response.intuit_tid
    created = await off_loop(
        sync_client.make_qbo_request,
        REALM,
        "customer",
        method="POST",
        json={"DisplayName": "Sync Co"},
    )
    assert created["Customer"]["DisplayName"] == "Sync Co"
    result = await off_loop(
        sync_client.query, REALM, "SELECT * FROM Customer MAXRESULTS 10", all_pages=True
    )
    assert isinstance(result, QueryResult)
    assert len(result) == 26 and len(result.responses) == 3
    assert "Sync Co" in {row["DisplayName"] for row in result}


async def test_same_exception_types_as_the_async_client(
    stack: Stack, sync_client: QBOGatewaySyncClient
) -> None:
    with pytest.raises(UnknownRealm):
        await off_loop(sync_client.make_qbo_request, OTHER_REALM, f"companyinfo/{OTHER_REALM}")
    with pytest.raises(QBOFault) as fault:
        await off_loop(sync_client.make_qbo_request, REALM, "invoice/424242")
    assert fault.value.code == "610" and fault.value.intuit_tid
    stack.sim.inject(FaultRule(kind="server_error", path="customer"))
    for _ in range(2):
        with pytest.raises(QBOFault):
            await off_loop(
                sync_client.make_qbo_request,
                REALM,
                "customer",
                method="POST",
                json={"DisplayName": "x"},
            )
        await stack.gateway.admitter.drain()
    with pytest.raises(CircuitOpen) as open_:
        await off_loop(sync_client.make_qbo_request, REALM, COMPANY)
    assert open_.value.retry_after is not None and open_.value.retry_after > 0


async def test_ensure_healthy_connection(stack: Stack, sync_client: QBOGatewaySyncClient) -> None:
    assert await off_loop(sync_client.ensure_healthy_connection, REALM) is True
    assert await off_loop(sync_client.ensure_healthy_connection, OTHER_REALM) is False
    doc = await off_loop(sync_client.health, REALM)
    assert doc is not None and doc["breaker"]["state"] == "closed"


async def test_one_client_serves_many_threads(
    stack: Stack, sync_client: QBOGatewaySyncClient
) -> None:
    ids = [f"thread-{i}" for i in range(8)]
    results = await asyncio.gather(
        *(off_loop(sync_client.make_qbo_request, REALM, COMPANY, request_id=i) for i in ids)
    )
    assert sorted(r.request_id or "" for r in results) == sorted(ids)
    assert all(r["CompanyInfo"]["Id"] == "1" for r in results)


async def test_works_when_the_calling_thread_runs_an_event_loop(stack: Stack) -> None:
    def inside_a_loop() -> tuple[str, int]:
        async def main() -> tuple[str, int]:
            # A sync service called from async code: the caller's loop is running here.
            with QBOGatewaySyncClient(stack.proxy_url, stack.ops_url) as client:
                response = client.make_qbo_request(REALM, COMPANY)
                return response["CompanyInfo"]["Id"], response.status

        return asyncio.run(main())

    assert await off_loop(inside_a_loop) == ("1", 200)


async def test_unreachable_gateway() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with QBOGatewaySyncClient(url, url) as client:
        with pytest.raises(GatewayUnreachable):
            client.make_qbo_request(REALM, COMPANY)
        with pytest.raises(GatewayUnreachable):
            client.ensure_healthy_connection(REALM)


def test_settings_from_environment_and_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QBO_GATEWAY_URL", "http://127.0.0.1:1/")
    monkeypatch.setenv("QBO_GATEWAY_OPS_URL", "http://127.0.0.1:2")
    monkeypatch.setenv("QBO_GATEWAY_KEY", "sync-secret-key")
    client = QBOGatewaySyncClient()
    assert client.proxy_url == "http://127.0.0.1:1"
    assert client.ops_url == "http://127.0.0.1:2"
    assert "sync-secret-key" not in repr(client)
    client.close()
    client.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        client.make_qbo_request(REALM, COMPANY)
