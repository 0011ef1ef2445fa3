"""Entity reads past their freshness renewed by one CDC call per realm, through whole gateways.

Embedded and Redis mode, the simulator's real change data capture, a ManualClock: stored
entity reads whose freshness ended cost one CDC call for the realm instead of one read
each; what changed in QuickBooks is served with its new body, what was deleted goes to QBO,
and an answer of 1000 objects makes every stored read go to QBO once more.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from prometheus_client import CollectorRegistry

from qbo_gateway.app import build_gateway
from qbo_gateway.cache.cdc_answer import cdc_entity, cdc_query, parse_cdc
from qbo_gateway.cache.cdc_refresh import CDC_CALLER
from qbo_gateway.cache.write_behind import WriteBehindCache
from qbo_gateway.economy.records import CALLER_PREFIX
from qbo_gateway.simulator.data import write
from tests.cache_rig import Rig, start_rig
from tests.harness import REALM, settings_for
from tests.redis_server import RedisServer

KEYS = Fernet.generate_key().decode()
MakeRig = Callable[..., Awaitable[Rig]]
FRESH = 60.0
VALIDATED = "qbo-gateway; hit; ttl=60; detail=cdc-validated"


@pytest.fixture(params=["memory", "redis"])
async def make(
    request: pytest.FixtureRequest,
    aiohttp_server: Any,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_prefix: str,
) -> AsyncIterator[MakeRig]:
    made: list[Rig] = []

    async def build(**overrides: Any) -> Rig:
        values: dict[str, Any] = {
            "cache_fresh_seconds": FRESH,
            "cache_cdc_interval_seconds": 60,
            "cache_write_through_seconds": 0,
        }
        values.update(overrides)
        if request.param == "redis":
            values.update(redis_url=redis_server.url, token_keys=KEYS)
        rig = await start_rig(aiohttp_server, tmp_path, redis_prefix, **values)
        made.append(rig)
        return rig

    yield build
    for rig in made:
        await rig.close()


def gets(rig: Rig, fragment: str) -> int:
    return sum(1 for r in rig.sim.api_requests if r.method == "GET" and fragment in r.path)


async def cache_customers(rig: Rig, ids: range) -> None:
    for n in ids:
        status, _, _ = await rig.get(f"customer/{n}")
        assert status == 200
    assert gets(rig, "/customer/") == len(ids)


async def test_ten_reads_past_freshness_cost_one_cdc_call(make: MakeRig) -> None:
    rig = await make()
    await cache_customers(rig, range(1, 11))
    rig.clock.advance(FRESH + 1)
    for n in range(1, 11):
        status, headers, body = await rig.get(f"customer/{n}")
        assert status == 200
        assert json.loads(body)["Customer"] == rig.sim.entity(REALM, "Customer", str(n))
        assert headers["Cache-Status"] == VALIDATED
        assert headers["Age"] == "0"
    assert gets(rig, "/cdc") == 1
    assert gets(rig, "/customer/") == 10  # the first ten reads only
    cdc = next(r for r in rig.sim.api_requests if r.path.endswith("/cdc"))
    assert cdc.query["entities"] == "Customer"
    # Renewed for the entry's freshness from the call: within it, plain hits, no call.
    rig.clock.advance(30)
    status, headers, _ = await rig.get("customer/4")
    assert (status, headers["Cache-Status"], headers["Age"]) == (
        200,
        "qbo-gateway; hit; ttl=30; detail=cdc-validated",
        "30",
    )
    # The CDC call is a metered read, counted under the gateway's own caller.
    await rig.gateway.meter.drained()
    counts = await rig.gateway.meter.backend.read(rig.gateway.meter.month.label)
    assert counts[CALLER_PREFIX + CDC_CALLER] == 1
    assert counts["e:cdc"] == 1
    # Past the renewed freshness, the next call asks from the last one (minus the margin).
    rig.clock.advance(31)
    status, headers, _ = await rig.get("customer/5")
    assert headers["Cache-Status"] == VALIDATED
    assert gets(rig, "/cdc") == 2 and gets(rig, "/customer/") == 10
    second = [r for r in rig.sim.api_requests if r.path.endswith("/cdc")][1]
    since = second.query["changedSince"]
    assert since.startswith("20") and since != cdc.query["changedSince"]


async def test_a_changed_entity_is_served_with_its_new_body(make: MakeRig) -> None:
    rig = await make()
    await cache_customers(rig, range(1, 4))
    rig.clock.advance(20)
    rig.sim.edit(REALM, "Customer", "2", {"DisplayName": "Renamed in QuickBooks"})
    rig.clock.advance(FRESH)
    status, headers, body = await rig.get("customer/2")
    assert status == 200 and headers["Cache-Status"] == VALIDATED
    assert json.loads(body)["Customer"]["DisplayName"] == "Renamed in QuickBooks"
    assert json.loads(body)["Customer"] == rig.sim.entity(REALM, "Customer", "2")
    status, headers, body = await rig.get("customer/1")
    assert json.loads(body)["Customer"]["DisplayName"] == "Customer 1"
    assert (gets(rig, "/cdc"), gets(rig, "/customer/")) == (1, 3)


async def test_a_deleted_entity_goes_to_qbo(make: MakeRig) -> None:
    rig = await make()
    for n in (4, 5):
        status, _, _ = await rig.get(f"invoice/{n}")
        assert status == 200
    rig.sim.remove(REALM, "Invoice", "4")
    rig.clock.advance(FRESH + 1)
    status, headers, body = await rig.get("invoice/4")
    assert status == 400
    assert json.loads(body)["Fault"]["Error"][0]["code"] == "610"
    assert "hit" not in headers["Cache-Status"]
    status, headers, _ = await rig.get("invoice/5")
    assert (status, headers["Cache-Status"]) == (200, VALIDATED)
    assert (gets(rig, "/cdc"), gets(rig, "/invoice/")) == (1, 3)


async def test_a_truncated_answer_sends_every_stored_read_to_qbo(make: MakeRig) -> None:
    rig = await make()
    await cache_customers(rig, range(1, 4))
    status, _, _ = await rig.get("invoice/1")
    assert status == 200
    realm = rig.sim.realms[REALM]
    for n in range(1000):
        write(realm, "Invoice", {"TxnDate": str(n)}, rig.clock.now())
    rig.clock.advance(FRESH + 1)
    for n in range(1, 4):
        status, headers, _ = await rig.get(f"customer/{n}")
        assert status == 200 and "hit" not in headers["Cache-Status"]
    # One call (its answer may have left changes out), then each read from QBO as before.
    assert (gets(rig, "/cdc"), gets(rig, "/customer/")) == (1, 6)
    assert rig.metric("qbo_gateway_cache_events_total", {"event": "cdc_truncated"}) == 1
    # The next call starts from the truncated one: reads stored since are vouched for.
    rig.clock.advance(FRESH + 1)
    status, headers, _ = await rig.get("customer/2")
    assert headers["Cache-Status"] == VALIDATED
    assert (gets(rig, "/cdc"), gets(rig, "/customer/")) == (2, 6)


async def test_no_cache_and_a_write_still_go_to_qbo(make: MakeRig) -> None:
    rig = await make()
    await cache_customers(rig, range(1, 3))
    rig.clock.advance(FRESH + 1)
    status, headers, _ = await rig.get("customer/1", headers={"Cache-Control": "no-cache"})
    assert (status, gets(rig, "/customer/"), gets(rig, "/cdc")) == (200, 3, 0)
    assert "hit" not in headers["Cache-Status"]
    status, headers, _ = await rig.get("customer/2")
    assert (headers["Cache-Status"], gets(rig, "/cdc")) == (VALIDATED, 1)
    # A write after the call voids it: the realm's reads wait for the next call.
    change = {"DisplayName": "Another"}
    status, _, _ = await rig.post("customer", json.dumps(change).encode())
    assert status == 200
    status, headers, _ = await rig.get("customer/2")
    assert "hit" not in headers["Cache-Status"]
    assert (gets(rig, "/customer/"), gets(rig, "/cdc")) == (4, 1)


async def test_the_off_switch(make: MakeRig) -> None:
    off = await make(cache_cdc_interval_seconds=0)
    await cache_customers(off, range(1, 3))
    off.clock.advance(FRESH + 1)
    status, headers, _ = await off.get("customer/1")
    assert status == 200 and "hit" not in headers["Cache-Status"]
    assert (gets(off, "/customer/"), gets(off, "/cdc")) == (3, 0)


async def test_queries_keep_their_freshness_rules(make: MakeRig) -> None:
    rig = await make()
    query = "query?query=select%20*%20from%20Customer"
    for _ in range(2):
        status, _, _ = await rig.get(query)
        assert status == 200
    rig.clock.advance(FRESH + 1)
    status, headers, _ = await rig.get(query)
    assert "hit" not in headers["Cache-Status"]
    assert (gets(rig, "/query"), gets(rig, "/cdc")) == (2, 0)


async def test_the_read_guard_refuses_the_call_as_a_background_read(make: MakeRig) -> None:
    rig = await make(coreplus_guard="background", coreplus_monthly_limit=1)
    await cache_customers(rig, range(1, 3))
    await rig.gateway.meter.drained()
    assert rig.gateway.meter.guard_active  # the month's projection passes the limit
    rig.clock.advance(FRESH + 1)
    for n in (1, 2):
        status, headers, _ = await rig.get(f"customer/{n}")
        assert status == 200 and "hit" not in headers["Cache-Status"]
    assert (gets(rig, "/customer/"), gets(rig, "/cdc")) == (4, 0)
    assert rig.metric("qbo_gateway_cache_events_total", {"event": "cdc_failed"}) == 1


def test_what_cdc_can_vouch_for() -> None:
    assert cdc_entity("customer/12", "", None) == "customer"
    assert cdc_entity("invoice/3", "minorversion=75&requestid=x", "application/json")
    assert cdc_entity("companyinfo/3", "", None) is None
    assert cdc_entity("customer/12", "include=enhancedAllCustomFields", None) is None
    assert cdc_entity("customer/12", "", "application/xml") is None
    assert cdc_entity("query", "query=select", None) is None
    assert cdc_entity("reports/ProfitAndLoss", "", None) is None
    assert cdc_query(["customer", "invoice"], 0.0) == (
        "entities=Customer,Invoice&changedSince=1970-01-01T00%3A00%3A00%2B00%3A00"
    )
    assert parse_cdc(b'{"Fault":{}}') is None
    changes = parse_cdc(
        json.dumps(
            {
                "CDCResponse": [
                    {
                        "QueryResponse": [
                            {"Customer": [{"Id": "1", "DisplayName": "A"}]},
                            {"Invoice": [{"Id": "2", "status": "Deleted"}]},
                            {},
                        ]
                    }
                ]
            }
        ).encode()
    )
    assert changes is not None and changes.count == 2 and not changes.truncated
    assert changes.objects == {
        ("customer", "1"): {"Id": "1", "DisplayName": "A"},
        ("invoice", "2"): None,
    }


async def test_replicas_share_the_proof_and_one_call(
    aiohttp_server: Any, tmp_path: Path, redis_server: RedisServer, redis_prefix: str
) -> None:
    values: dict[str, Any] = {
        "cache_fresh_seconds": FRESH,
        "cache_write_through_seconds": 0,
        "redis_url": redis_server.url,
        "token_keys": KEYS,
    }
    first = await start_rig(aiohttp_server, tmp_path / "a", redis_prefix, **values)
    sim_url = first.gateway.settings.api_base_url
    second_gw = await build_gateway(
        settings_for(sim_url, tmp_path / "b", **values),
        clock=first.clock,
        registry=CollectorRegistry(),
        redis_prefix=redis_prefix,
    )
    server = await aiohttp_server(second_gw.proxy_app)
    second_url = str(server.make_url("")).rstrip("/")
    try:
        await cache_customers(first, range(1, 6))
        first.clock.advance(FRESH + 1)
        status, headers, _ = await first.get("customer/1")
        assert (status, headers["Cache-Status"]) == (200, VALIDATED)
        # This replica's stores reach Redis a tick after the reply (the write-behind queue).
        queue = first.gateway.cache.backend
        assert isinstance(queue, WriteBehindCache)
        await queue.flush_now()
        # The other replica finds the realm's proof in Redis: no call of its own.
        for n in range(2, 6):
            async with first.session.get(f"{second_url}/v3/company/{REALM}/customer/{n}") as resp:
                assert resp.status == 200
                assert resp.headers["Cache-Status"] == VALIDATED
        assert (gets(first, "/cdc"), gets(first, "/customer/")) == (1, 5)
    finally:
        await second_gw.close()
        await first.close()


async def test_a_call_more_than_30_days_after_the_last_sends_older_reads_to_qbo(
    make: MakeRig,
) -> None:
    rig = await make(cache_stale_seconds=40 * 86400)
    await cache_customers(rig, range(1, 3))
    rig.clock.advance(FRESH + 1)
    status, headers, _ = await rig.get("customer/1")
    assert headers["Cache-Status"] == VALIDATED
    rig.clock.advance(31 * 86400)
    # QBO looks back 30 days at most: the call asks from there, and cannot vouch for reads
    # stored before it, which go to QBO once more.
    for _ in range(2):
        status, headers, _ = await rig.get("customer/2")
        assert status == 200
    assert headers["Cache-Status"].startswith("qbo-gateway; hit; ttl=60")
    assert "cdc-validated" not in headers["Cache-Status"]
    assert (gets(rig, "/cdc"), gets(rig, "/customer/")) == (2, 3)
    assert rig.metric("qbo_gateway_cache_events_total", {"event": "cdc_failed"}) == 0
