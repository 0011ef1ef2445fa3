"""The read cache through whole gateways: the simulator and the gateway on real sockets.

Every test drives the real handler built by `app.build_gateway` (in embedded mode with the
in-process cache, and in Redis mode on a private redis-server) and asserts on what a caller
receives (status, body, `Age`, `X-QBO-Gateway-Degraded`, `Cache-Status`), on the calls the
simulator saw and on the cache metrics. Time is a `ManualClock` shared by the gateway and
the simulator; retry back-off sleeps advance it, so expected ages are read from it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from qbo_gateway.cache.backend_redis import RedisCacheBackend
from qbo_gateway.simulator import FaultRule
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from tests.cache_rig import Rig, start_rig
from tests.harness import OTHER_REALM, REALM
from tests.redis_server import RedisServer, free_port

READ = f"companyinfo/{REALM}"
STALE = 3600.0
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
            overrides.update(redis_url=redis_server.url, token_keys=KEYS, replica_count=1)
        rig = await start_rig(aiohttp_server, tmp_path, redis_prefix, **overrides)
        made.append(rig)
        return rig

    yield build
    for rig in made:
        await rig.close()


async def warm(rig: Rig, rest: str = READ, realm: str = REALM) -> bytes:
    status, headers, body = await rig.get(rest, realm)
    assert status == 200
    assert headers["Cache-Status"] == rig.stored_status
    return body


# --- stale answers when QBO fails --------------------------------------------------------

UPSTREAM_FAILURES = [
    (FaultRule("server_error", path="companyinfo"), "upstream-error", "; fwd-status=500"),
    (FaultRule("throttle", path="companyinfo"), "rate-limited", "; fwd-status=429"),
    (FaultRule("disconnect", path="companyinfo"), "upstream-error", ""),
]


@pytest.mark.parametrize(
    ("rule", "reason", "fwd_status"), UPSTREAM_FAILURES, ids=["500", "429", "disconnect"]
)
async def test_failed_read_is_answered_stale_and_marked(
    make: MakeRig, rule: FaultRule, reason: str, fwd_status: str
) -> None:
    rig = await make()
    stored_at = rig.clock.now()
    original = await warm(rig)
    rig.clock.advance(125.4)
    rig.sim.inject(rule)
    status, headers, body = await rig.get(READ)
    assert status == 200
    assert body == original
    assert headers["Content-Type"].startswith("application/json")
    # Retries sleep on the shared clock, so the age is read from it after the answer.
    age = rig.clock.now() - stored_at
    assert headers["Age"] == str(math.floor(age))
    assert headers["X-QBO-Gateway-Degraded"] == reason
    assert headers["Cache-Status"] == (
        f"qbo-gateway; fwd=stale{fwd_status}; ttl={math.floor(-age)}; detail={reason}"
    )
    assert "intuit_tid" not in headers  # it named the original call, not this one
    assert headers["X-Request-Id"]
    assert rig.metric("qbo_gateway_stale_served_total", {"reason": reason}) == 1


async def test_qbo_not_answering_in_time_is_answered_stale(make: MakeRig) -> None:
    rig = await make(request_timeout_seconds=0.2)  # the gateway's own deadline, in real time
    stored_at = rig.clock.now()
    original = await warm(rig)
    rig.hold.close("companyinfo")  # QBO takes the request and never answers
    status, headers, body = await rig.get(READ)
    assert status == 200 and body == original
    age = rig.clock.now() - stored_at
    assert headers["X-QBO-Gateway-Degraded"] == "upstream-timeout"
    assert headers["Cache-Status"] == (
        f"qbo-gateway; fwd=stale; ttl={math.floor(-age)}; detail=upstream-timeout"
    )


async def test_refused_realm_is_answered_stale_with_a_hit(make: MakeRig) -> None:
    rig = await make(cache_stale_seconds=86400)
    stored_at = rig.clock.now()
    original = await warm(rig)
    rig.sim.revoke_realm(REALM)  # the refresh token is dead: a person must reconnect
    rig.clock.advance(7200)  # the access token the gateway holds has expired too
    status, headers, body = await rig.get(READ)
    assert status == 200 and body == original
    age = rig.clock.now() - stored_at
    assert headers["X-QBO-Gateway-Degraded"] == "reconnect-required"
    # QBO was not asked: the stored read is a hit, and no upstream status is named.
    assert headers["Cache-Status"] == (
        f"qbo-gateway; hit; ttl={math.floor(-age)}; detail=reconnect-required"
    )
    assert headers["Age"] == str(math.floor(age))


async def test_no_cache_caller_gets_the_error_not_stale_data(make: MakeRig) -> None:
    rig = await make()
    await warm(rig)
    rig.sim.inject(FaultRule("server_error", path="companyinfo"))
    status, headers, _body = await rig.get(READ, headers={"Cache-Control": "max-age=0, no-cache"})
    assert status == 500  # QBO's own answer, relayed
    assert "X-QBO-Gateway-Degraded" not in headers
    rig.sim.clear_faults()
    rig.sim.inject(FaultRule("disconnect", path="companyinfo"))
    status, headers, _body = await rig.get(READ, headers={"Cache-Control": "no-cache"})
    assert status == 502
    assert headers["X-QBO-Gateway-Error"] == "GW-UPSTREAM-UNAVAILABLE"
    assert "X-QBO-Gateway-Degraded" not in headers
    assert rig.metric("qbo_gateway_stale_served_total", {"reason": "upstream-error"}) == 0


async def test_stale_answers_end_with_the_stale_window(make: MakeRig) -> None:
    rig = await make()
    await warm(rig)
    rig.sim.inject(FaultRule("throttle", path="companyinfo"))
    rig.clock.advance(STALE - 1)
    status, headers, _body = await rig.get(READ)
    assert status == 200 and headers["X-QBO-Gateway-Degraded"] == "rate-limited"
    await rig.gateway.admitter.drain()  # the throttle is recorded after the answer
    rig.clock.advance(1)
    status, headers, _body = await rig.get(READ)
    assert status == 429
    assert "X-QBO-Gateway-Degraded" not in headers


async def test_what_is_not_stored(make: MakeRig) -> None:
    rig = await make(cache_max_entry_bytes=2048)
    status, headers, _b = await rig.get(READ, headers={"Cache-Control": "no-store"})
    assert status == 200 and headers["Cache-Status"] == rig.miss_status
    rig.sim.inject(FaultRule("fault_in_200", path="customer/1", times=1))
    _s, headers, _b = await rig.get("customer/1")
    assert headers["Cache-Status"] == rig.miss_status
    _s, headers, _b = await rig.get("reports/ProfitAndLoss?sim_size=4096")  # over the entry bound
    assert headers["Cache-Status"] == rig.miss_status
    assert rig.metric("qbo_gateway_cache_events_total", {"event": "skip"}) == 3
    assert rig.metric("qbo_gateway_cache_events_total", {"event": "store"}) == 0
    rig.sim.inject(FaultRule("server_error"))
    for rest in (READ, "customer/1", "reports/ProfitAndLoss?sim_size=4096"):
        status, headers, _b = await rig.get(rest)
        assert status == 500 and "X-QBO-Gateway-Degraded" not in headers


async def test_streamed_read_is_stored_whole_and_covers_a_failure(make: MakeRig) -> None:
    rig = await make()
    big = "reports/ProfitAndLoss?sim_size=300000"  # chunked by the simulator: streamed
    status, headers, body = await rig.get(big)
    assert status == 200 and len(body) > 256 * 1024
    assert headers["Cache-Status"] == rig.stored_status
    rig.sim.inject(FaultRule("server_error", path="reports"))
    status, headers, stale = await rig.get(big)
    assert status == 200 and stale == body
    assert headers["X-QBO-Gateway-Degraded"] == "upstream-error"


async def test_requestid_and_minorversion_do_not_split_stored_reads(make: MakeRig) -> None:
    rig = await make()
    await warm(rig, f"{READ}?minorversion=75&requestid=a&b=1&a=2")
    rig.sim.inject(FaultRule("server_error", path="companyinfo"))
    _s, headers, _b = await rig.get(f"{READ}?a=2&requestid=zz&b=1")
    assert headers["X-QBO-Gateway-Degraded"] == "upstream-error"
    status, _h, _b = await rig.get(f"{READ}?a=3&b=1")
    assert status == 500


async def test_post_query_is_a_read_keyed_by_its_body(make: MakeRig) -> None:
    rig = await make()
    customers = b"select * from Customer"
    status, headers, _b = await rig.post("query", customers)
    assert status == 200 and headers["Cache-Status"] == rig.stored_status
    rig.sim.inject(FaultRule("server_error", path="query"))
    _s, headers, _b = await rig.post("query", customers)
    assert headers["X-QBO-Gateway-Degraded"] == "upstream-error"
    status, headers, _b = await rig.post("query", b"select * from Invoice")
    assert status == 500


async def test_one_realms_read_is_never_served_for_another(make: MakeRig) -> None:
    rig = await make()
    await rig.add_realm(OTHER_REALM)
    await warm(rig)
    rig.sim.inject(FaultRule("server_error", path="companyinfo"))
    status, headers, _b = await rig.get(f"companyinfo/{REALM}", OTHER_REALM)
    assert status == 500  # QBO's error: the other realm's stored read is not this one's
    assert "X-QBO-Gateway-Degraded" not in headers
    _s, headers, _b = await rig.get(READ)
    assert headers["X-QBO-Gateway-Degraded"] == "upstream-error"


async def test_writes_are_never_answered_from_the_cache(make: MakeRig) -> None:
    rig = await make(cache_write_through_seconds=0)  # write-through: test_economy_spend
    status, headers, _b = await rig.post("customer", b'{"DisplayName":"A"}')
    assert status == 200
    assert headers["Cache-Status"] == "qbo-gateway; fwd=bypass"
    rig.sim.inject(FaultRule("server_error", path="customer"))
    status, headers, _b = await rig.post("customer", b'{"DisplayName":"A"}')
    assert status == 500
    assert "X-QBO-Gateway-Degraded" not in headers
    assert rig.metric("qbo_gateway_cache_events_total", {"event": "store"}) == 0


async def test_cache_events_are_counted(make: MakeRig) -> None:
    rig = await make()
    await warm(rig)
    rig.sim.inject(FaultRule("server_error", path="companyinfo"))
    await rig.get(READ)  # freshness off: looked up only because QBO failed
    assert rig.metric("qbo_gateway_cache_events_total", {"event": "store"}) == 1
    assert rig.metric("qbo_gateway_cache_events_total", {"event": "hit"}) == 1
    assert rig.metric("qbo_gateway_cache_events_total", {"event": "miss"}) == 0


# --- freshness (QBO_CACHE_FRESH_SECONDS > 0) ----------------------------------------------


async def test_fresh_entry_is_served_without_calling_qbo(make: MakeRig) -> None:
    rig = await make(cache_fresh_seconds=60)
    original = await warm(rig)
    calls = rig.sim.api_request_count
    rig.clock.advance(20.5)
    status, headers, body = await rig.get(READ)
    assert status == 200 and body == original
    assert headers["Cache-Status"] == "qbo-gateway; hit; ttl=39"
    assert headers["Age"] == "20"
    assert "X-QBO-Gateway-Degraded" not in headers
    assert rig.sim.api_request_count == calls
    rig.clock.advance(40)  # no longer fresh: QBO is asked again
    status, headers, body = await rig.get(READ)
    assert headers["Cache-Status"] == "qbo-gateway; fwd=stale; stored"
    assert body != original  # the simulator's answer carries its time
    assert rig.sim.api_request_count == calls + 1


async def test_no_cache_caller_skips_a_fresh_entry(make: MakeRig) -> None:
    rig = await make(cache_fresh_seconds=60)
    await warm(rig)
    calls = rig.sim.api_request_count
    _s, headers, _b = await rig.get(READ, headers={"Cache-Control": "no-cache"})
    assert headers["Cache-Status"] == "qbo-gateway; fwd=request; stored"
    assert rig.sim.api_request_count == calls + 1


async def test_twenty_concurrent_misses_make_one_upstream_call(make: MakeRig) -> None:
    rig = await make(cache_fresh_seconds=60)
    calls = rig.sim.api_request_count
    rig.hold.close("companyinfo")
    looked_up = rig.count_lookups(20)
    reads = [asyncio.create_task(rig.get(READ)) for _ in range(20)]
    # Every request has missed and joined (or started) the flight before QBO answers.
    await asyncio.wait_for(looked_up.wait(), 10)
    await asyncio.wait_for(rig.hold.arrived.wait(), 10)
    rig.hold.open()
    answers = await asyncio.gather(*reads)
    assert rig.sim.api_request_count == calls + 1
    assert [status for status, _h, _b in answers] == [200] * 20
    assert len({body for _s, _h, body in answers}) == 1
    assert {h["Cache-Status"] for _s, h, _b in answers} == {"qbo-gateway; fwd=uri-miss; stored"}
    assert len({h["X-Request-Id"] for _s, h, _b in answers}) == 20
    assert rig.metric("qbo_gateway_cache_events_total", {"event": "store"}) == 1


async def test_concurrent_misses_share_a_failure_and_its_stale_answer(make: MakeRig) -> None:
    rig = await make(cache_fresh_seconds=60)
    original = await warm(rig)
    rig.clock.advance(61)
    calls = rig.sim.api_request_count
    rig.sim.inject(FaultRule("throttle", path="companyinfo"))
    rig.hold.close("companyinfo")
    looked_up = rig.count_lookups(5)
    reads = [asyncio.create_task(rig.get(READ)) for _ in range(5)]
    await asyncio.wait_for(looked_up.wait(), 10)
    rig.hold.open()
    answers = await asyncio.gather(*reads)
    assert rig.sim.api_request_count == calls + 1
    for status, headers, body in answers:
        assert status == 200 and body == original
        assert headers["Cache-Status"] == (
            "qbo-gateway; fwd=stale; fwd-status=429; ttl=-1; detail=rate-limited"
        )
    assert rig.metric("qbo_gateway_stale_served_total", {"reason": "rate-limited"}) == 5


async def test_write_ends_freshness_of_its_realm_only(make: MakeRig) -> None:
    rig = await make(cache_fresh_seconds=60)
    await rig.add_realm(OTHER_REALM)
    original = await warm(rig)
    other = await warm(rig, f"companyinfo/{OTHER_REALM}", OTHER_REALM)
    rig.clock.advance(1)  # the simulator's answers carry its time: later ones differ
    status, _h, _b = await rig.post("customer", b'{"DisplayName":"B"}')
    assert status == 200
    calls = rig.sim.api_request_count
    _s, headers, body = await rig.get(READ)  # not fresh anymore: QBO is asked
    assert headers["Cache-Status"] == "qbo-gateway; fwd=stale; stored"
    assert rig.sim.api_request_count == calls + 1
    _s, headers, body = await rig.get(f"companyinfo/{OTHER_REALM}", OTHER_REALM)
    assert headers["Cache-Status"] == "qbo-gateway; hit; ttl=59"
    assert body == other
    # The read stored before the write still covers a failure, as stale.
    rig.sim.inject(FaultRule("server_error", path="companyinfo"))
    await rig.post("customer", b'{"DisplayName":"C"}')
    _s, headers, body = await rig.get(READ)
    assert headers["X-QBO-Gateway-Degraded"] == "upstream-error"
    assert body != original  # the answer stored after the first write


async def test_read_that_raced_a_write_is_not_stored_as_fresh(make: MakeRig) -> None:
    rig = await make(cache_fresh_seconds=60)
    rig.hold.close("companyinfo")
    read = asyncio.create_task(rig.get(READ))
    await asyncio.wait_for(rig.hold.arrived.wait(), 10)
    # The write completes while the read's answer (from before the write) is in flight.
    status, _h, _b = await rig.post("customer", b'{"DisplayName":"D"}')
    assert status == 200
    rig.hold.open()
    _s, headers, _b = await read
    assert headers["Cache-Status"] == "qbo-gateway; fwd=uri-miss; stored"
    calls = rig.sim.api_request_count
    _s, headers, _b = await rig.get(READ)
    assert headers["Cache-Status"] == "qbo-gateway; fwd=stale; stored"
    assert rig.sim.api_request_count == calls + 1


# --- the cache's backend failing ----------------------------------------------------------


async def test_unreachable_cache_backend_is_a_miss_and_fails_no_request(make: MakeRig) -> None:
    rig = await make(cache_fresh_seconds=30)
    down = make_redis(f"redis://127.0.0.1:{free_port()}/0")
    rig.gateway.cache.backend = RedisCacheBackend(down, RedisKeys("down"))
    try:
        status, headers, _b = await rig.get(READ)
        assert status == 200 and headers["Cache-Status"] == "qbo-gateway; fwd=uri-miss"
        status, _h, _b = await rig.post("customer", b'{"DisplayName":"E"}')
        assert status == 200
        rig.sim.inject(FaultRule("server_error", path="companyinfo"))
        status, _h, _b = await rig.get(READ)
        assert status == 500
        assert rig.metric("qbo_gateway_cache_events_total", {"event": "miss"}) == 2
    finally:
        await down.aclose()
