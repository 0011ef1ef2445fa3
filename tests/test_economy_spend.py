"""Spending fewer metered reads, through whole gateways (embedded and Redis mode).

A create's or update's answer stands for its entity's read; rarely-changing entities stay
fresh longer; every such answer is marked (`Cache-Status`, `Age`), a caller's `no-cache`
still goes to QBO, and any write to the realm ends what was fresh. The simulator counts
the reads QBO saw; the ManualClock moves time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from qbo_gateway.economy.freshness import (
    DEFAULT_ENTITY_FRESH,
    EntityFreshness,
    KeptRead,
    parse_entity_fresh,
)
from tests.cache_rig import Rig, start_rig
from tests.redis_server import RedisServer

KEYS = Fernet.generate_key().decode()
MakeRig = Callable[..., Awaitable[Rig]]


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
        if request.param == "redis":
            overrides.update(redis_url=redis_server.url, token_keys=KEYS)
        rig = await start_rig(aiohttp_server, tmp_path, redis_prefix, **overrides)
        made.append(rig)
        return rig

    yield build
    for rig in made:
        await rig.close()


def qbo_gets(rig: Rig, fragment: str) -> int:
    return sum(1 for r in rig.sim.api_requests if r.method == "GET" and fragment in r.path)


async def create(rig: Rig, name: str) -> dict[str, Any]:
    status, _, body = await rig.post("customer", json.dumps({"DisplayName": name}).encode())
    assert status == 200
    customer: dict[str, Any] = json.loads(body)["Customer"]
    return customer


async def test_a_created_entity_is_read_without_qbo(make: MakeRig) -> None:
    rig = await make()
    made = await create(rig, "Kept")
    rig.clock.advance(10)
    status, headers, body = await rig.get(f"customer/{made['Id']}?minorversion=75")
    assert status == 200
    assert json.loads(body)["Customer"] == made
    assert headers["Cache-Status"] == "qbo-gateway; hit; ttl=290"
    assert headers["Age"] == "10"
    assert qbo_gets(rig, "/customer/") == 0
    assert rig.metric("qbo_gateway_coreplus_calls_total", {"source": "caller"}) == 0
    # Past its freshness the realm's CDC call renews it, not a read of the entity.
    rig.clock.advance(300)
    status, headers, _ = await rig.get(f"customer/{made['Id']}")
    assert (status, qbo_gets(rig, "/customer/"), qbo_gets(rig, "/cdc")) == (200, 0, 1)
    assert headers["Cache-Status"] == "qbo-gateway; hit; ttl=300; detail=cdc-validated"


async def test_an_update_answer_is_the_next_read(make: MakeRig) -> None:
    rig = await make()
    made = await create(rig, "Before")
    change = {"Id": made["Id"], "SyncToken": made["SyncToken"], "DisplayName": "After"}
    status, _, _ = await rig.post("customer?operation=update", json.dumps(change).encode())
    assert status == 200
    status, headers, body = await rig.get(f"customer/{made['Id']}")
    assert json.loads(body)["Customer"]["DisplayName"] == "After"
    assert headers["Cache-Status"].startswith("qbo-gateway; hit")
    assert qbo_gets(rig, "/customer/") == 0


async def test_no_cache_still_goes_to_qbo(make: MakeRig) -> None:
    rig = await make()
    made = await create(rig, "Asked")
    status, headers, _ = await rig.get(
        f"customer/{made['Id']}", headers={"Cache-Control": "no-cache"}
    )
    assert (status, qbo_gets(rig, "/customer/")) == (200, 1)
    assert "hit" not in headers["Cache-Status"]


async def test_another_write_to_the_realm_ends_the_kept_read(make: MakeRig) -> None:
    # CDC refresh off: with it, the realm's CDC call would renew the read (test_cache_cdc).
    rig = await make(cache_cdc_interval_seconds=0)
    made = await create(rig, "First")
    await create(rig, "Second")
    status, headers, _ = await rig.get(f"customer/{made['Id']}")
    assert (status, qbo_gets(rig, "/customer/")) == (200, 1)
    assert "hit" not in headers["Cache-Status"]


async def test_write_through_off_keeps_nothing(make: MakeRig) -> None:
    rig = await make(cache_write_through_seconds=0)
    made = await create(rig, "Plain")
    status, _, _ = await rig.get(f"customer/{made['Id']}")
    assert (status, qbo_gets(rig, "/customer/")) == (200, 1)


async def test_reference_data_stays_fresh_longer(make: MakeRig) -> None:
    rig = await make()
    query = "query?query=select%20*%20from%20Account"
    for _ in range(3):
        status, headers, _ = await rig.get(query)
        assert status == 200
    assert qbo_gets(rig, "/query") == 1
    assert headers["Cache-Status"] == "qbo-gateway; hit; ttl=3600"
    rig.clock.advance(3600)
    status, _, _ = await rig.get(query)
    assert (status, qbo_gets(rig, "/query")) == (200, 2)
    # Customers are not reference data: every read asks QBO (freshness off by default).
    for _ in range(2):
        status, _, _ = await rig.get("query?query=select%20*%20from%20Customer")
    assert qbo_gets(rig, "/query") == 4


async def test_per_entity_freshness_is_a_setting(make: MakeRig) -> None:
    rig = await make(cache_entity_fresh_seconds="customer=60,account=0")
    for _ in range(2):
        status, _, _ = await rig.get("customer/1")
        status, _, _ = await rig.get("query?query=select%20*%20from%20Account")
    assert status == 200
    assert (qbo_gets(rig, "/customer/"), qbo_gets(rig, "/query")) == (1, 2)


def test_kept_reads_and_entities() -> None:
    rules = EntityFreshness(DEFAULT_ENTITY_FRESH, default=0.0, write_through=300.0)
    body = json.dumps({"Customer": {"Id": "12", "DisplayName": "x"}, "time": "t"}).encode()
    assert rules.kept_read("customer", "requestid=1", body) == KeptRead("customer/12", 300.0)
    assert rules.kept_read("customer", "operation=delete", body) is None
    deleted = json.dumps({"Customer": {"Id": "12", "status": "Deleted"}}).encode()
    assert rules.kept_read("customer", "", deleted) is None
    assert rules.kept_read("batch", "", body) is None
    assert rules.kept_read("customer", "", b"not json") is None
    term = json.dumps({"Term": {"Id": "3"}}).encode()
    assert rules.kept_read("term", "", term) == KeptRead("term/3", 86400.0)
    assert rules.fresh_for("query", "query=select+*+from+TaxCode", None) == 86400.0
    assert rules.fresh_for("query", "", b"SELECT * FROM Account WHERE Active = true") == 3600.0
    assert rules.fresh_for("invoice/4", "", None) == 0.0
    assert rules.may_be_kept("invoice/4") and not rules.may_be_kept("reports/ProfitAndLoss")
    assert not rules.may_be_kept("companyinfo/9130349226472226")
    assert parse_entity_fresh("Account=60, term=0") == {"account": 60.0, "term": 0.0}
    for bad in ("account", "account=-1", "acc0unt=5"):
        with pytest.raises(ValueError):
            parse_entity_fresh(bad)
