"""The response cache's policy, seen by a caller through real sockets, on both backends.

A small test proxy wires `ResponseCache` the way the gateway's proxy does (lookup, fresh hit,
single-flight upstream call, store, stale answer on failure) in front of a real aiohttp
server playing QBO, so every assertion is on what a caller receives: status, body, `Age`,
`X-QBO-Gateway-Degraded`, `Cache-Status`, and on metrics, health reports and upstream calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from qbo_gateway.cache.backend_memory import MemoryCacheBackend
from qbo_gateway.cache.backend_redis import RedisCacheBackend
from qbo_gateway.cache.policy import (
    allows_fresh,
    allows_stale,
    cache_status_for_upstream,
    degraded_reason,
    degraded_reason_for_upstream,
    key_for,
)
from qbo_gateway.cache.response_cache import ResponseCache
from qbo_gateway.clock import ManualClock
from qbo_gateway.faults import (
    CircuitOpen,
    GatewayError,
    RateLimited,
    ReconnectRequired,
    UpstreamTimeout,
    UpstreamUnavailable,
    render_fault,
)
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import NullObserver
from qbo_gateway.proxy.paths import is_read
from qbo_gateway.single_flight import SingleFlight
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from tests.redis_server import RedisServer, free_port
from tests.test_cache_backends import BACKENDS, open_backend

REALM_A = "1111"
REALM_B = "2222"
STALE = 3600.0


class RecordingObserver(NullObserver):
    def __init__(self) -> None:
        self.stale: list[tuple[str, str, float]] = []

    def stale_served(self, realm_id: str, *, reason: str, age: float) -> None:
        self.stale.append((realm_id, reason, age))


@dataclass
class FakeQbo:
    """QBO's role: answers reads with a body naming realm, path and call number."""

    mode: str = "ok"  # ok | error500 | throttle429 | fault200 | hang
    calls: int = 0
    hold: asyncio.Event | None = None  # when set, reads wait for it (single-flight test)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release_hang: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.arrived.set()
        await request.read()
        if self.hold is not None:
            await self.hold.wait()
        if self.mode == "hang":
            await self.release_hang.wait()
        if self.mode == "error500":
            return web.json_response({"Fault": {"Error": [{"code": "10000"}]}}, status=500)
        if self.mode == "throttle429":
            return web.json_response({"Fault": {"Error": [{"code": "3001"}]}}, status=429)
        if self.mode == "fault200":
            return web.json_response({"Fault": {"Error": [{"code": "610"}], "type": "Val"}})
        doc = {"path": request.path, "query": request.query_string, "call": self.calls}
        return web.json_response(doc, headers={"intuit_tid": f"tid-{self.calls}"})


class Rig:
    """A test proxy using ResponseCache like the gateway's proxy does, in front of FakeQbo."""

    def __init__(self, cache: ResponseCache, qbo: FakeQbo, qbo_url: str) -> None:
        self.cache = cache
        self.qbo = qbo
        self.qbo_url = qbo_url
        self.refusal: GatewayError | None = None  # admission / token refusal before upstream
        self.session: aiohttp.ClientSession | None = None
        self.lookups = 0
        self.lookups_target = 0
        self.lookups_reached = asyncio.Event()
        self.flights: SingleFlight[object, tuple[int, dict[str, str], bytes, bool]] = SingleFlight(
            "rig"
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/v3/company/{realm}/{rest:.*}", self.handle)
        return app

    async def _upstream(
        self, request: web.Request, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if self.refusal is not None:
            raise self.refusal
        assert self.session is not None
        try:
            async with self.session.request(
                request.method,
                self.qbo_url + request.path_qs,
                data=body,
                timeout=aiohttp.ClientTimeout(total=0.3),
            ) as resp:
                return resp.status, dict(resp.headers), await resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable() from exc

    async def handle(self, request: web.Request) -> web.StreamResponse:
        realm = request.match_info["realm"]
        body = await request.read()
        cc = request.headers.get("Cache-Control")
        cache = self.cache
        if not is_read(request.method, request.match_info["rest"]):
            try:
                status, headers, data = await self._upstream(request, body)
            except GatewayError as exc:
                return render_fault(exc)
            if status < 300:
                await cache.end_freshness(realm)
            return web.Response(
                status=status,
                body=data,
                headers={
                    "Content-Type": headers["Content-Type"],
                    "Cache-Status": cache_status_for_upstream(stored=False, cacheable=False),
                },
            )
        key = key_for(
            realm, request.method, request.path, request.query.items(), body,
            request.headers.get("Accept"),
        )  # fmt: skip
        found = await cache.lookup(key)
        self.lookups += 1
        if self.lookups == self.lookups_target:
            self.lookups_reached.set()
        entry = found.entry
        if entry is not None and cache.fresh(entry) and allows_fresh(cc):
            return cache.hit_response(entry)

        async def fetch() -> tuple[int, dict[str, str], bytes, bool]:
            status, headers, data = await self._upstream(request, body)
            stored = await cache.store(
                key, status, headers, data, request_cache_control=cc, epoch=found.epoch
            )
            return status, headers, data, stored

        try:
            status, headers, data, stored = await self.flights.run(key, fetch)
        except GatewayError as exc:
            reason = degraded_reason(exc)
            if entry and reason and allows_stale(cc) and cache.servable_stale(entry):
                return cache.stale_response(entry, reason)
            return render_fault(exc)
        reason = degraded_reason_for_upstream(status, data)
        if entry and reason and allows_stale(cc) and cache.servable_stale(entry):
            return cache.stale_response(entry, reason, fwd_status=status)
        fwd = cache.forward_reason(entry, cc)
        return web.Response(
            status=status,
            body=data,
            headers={
                "Content-Type": headers["Content-Type"],
                "Cache-Status": cache_status_for_upstream(stored, cacheable=True, fwd=fwd),
            },
        )


@dataclass
class Env:
    rig: Rig
    client: TestClient[web.Request, web.Application]
    qbo: FakeQbo
    clock: ManualClock
    metrics: Metrics
    observer: RecordingObserver
    cache: ResponseCache

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def make_env(
    kind: str,
    redis_server: RedisServer,
    prefix: str,
    *,
    fresh: float = 0.0,
    stale: float = STALE,
    max_entry_bytes: int = 1 << 20,
) -> AsyncIterator[Env]:
    clock = ManualClock()
    metrics = Metrics(CollectorRegistry())
    observer = RecordingObserver()
    backend, redis = await open_backend(
        kind, clock=clock, metrics=metrics, redis_server=redis_server, prefix=prefix
    )
    cache = ResponseCache(
        backend,
        clock=clock,
        metrics=metrics,
        observer=observer,
        fresh_seconds=fresh,
        stale_seconds=stale,
        max_entry_bytes=max_entry_bytes,
    )
    qbo = FakeQbo()
    qbo_app = web.Application()
    qbo_app.router.add_route("*", "/{tail:.*}", qbo.handle)
    qbo_server = TestServer(qbo_app)
    await qbo_server.start_server()
    rig = Rig(cache, qbo, str(qbo_server.make_url("")).rstrip("/"))
    rig.session = aiohttp.ClientSession()
    client = TestClient(TestServer(rig.app()))
    await client.start_server()
    try:
        yield Env(rig, client, qbo, clock, metrics, observer, cache)
    finally:
        qbo.release_hang.set()
        await client.close()
        await rig.session.close()
        await qbo_server.close()
        if redis is not None:
            await redis.aclose()


@pytest.fixture(params=BACKENDS)
async def env(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[Env]:
    async for e in make_env(request.param, redis_server, redis_prefix):
        yield e


@pytest.fixture(params=BACKENDS)
async def fresh_env(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_prefix: str
) -> AsyncIterator[Env]:
    async for e in make_env(request.param, redis_server, redis_prefix, fresh=60.0):
        yield e


READ = f"/v3/company/{REALM_A}/invoice/7?minorversion=75"


async def warm(env: Env, path: str = READ) -> dict[str, object]:
    resp = await env.client.get(path)
    assert resp.status == 200
    assert resp.headers["Cache-Status"] == "qbo-gateway; fwd=uri-miss; stored"
    doc: dict[str, object] = await resp.json()
    return doc


# --- every degraded reason, on both backends --------------------------------------------

REFUSALS = [
    (CircuitOpen(retry_after=30), "circuit-open"),
    (RateLimited(retry_after=5), "rate-limited"),
    (ReconnectRequired(), "reconnect-required"),
]


@pytest.mark.parametrize(("refusal", "reason"), REFUSALS, ids=[r for _, r in REFUSALS])
async def test_refused_before_upstream_serves_stale_marked(
    env: Env, refusal: GatewayError, reason: str
) -> None:
    original = await warm(env)
    env.clock.advance(125.4)
    env.rig.refusal = refusal
    resp = await env.client.get(READ)
    assert resp.status == 200
    assert await resp.json() == original
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Age"] == "125"
    assert resp.headers["X-QBO-Gateway-Degraded"] == reason
    assert resp.headers["Cache-Status"] == f"qbo-gateway; hit; ttl=-126; detail={reason}"
    assert "intuit_tid" not in resp.headers  # it named the original call, not this one
    assert env.qbo.calls == 1
    assert env.sample("qbo_gateway_stale_served_total", {"reason": reason}) == 1
    [(realm, seen_reason, age)] = env.observer.stale
    assert (realm, seen_reason) == (REALM_A, reason)
    assert age == pytest.approx(125.4)


UPSTREAM_FAILURES = [
    ("error500", "upstream-error", "; fwd-status=500"),
    ("throttle429", "rate-limited", "; fwd-status=429"),
    ("hang", "upstream-timeout", ""),
    ("unreachable", "upstream-error", ""),
]


@pytest.mark.parametrize(
    ("mode", "reason", "fwd_status"), UPSTREAM_FAILURES, ids=[m for m, _, _ in UPSTREAM_FAILURES]
)
async def test_upstream_failure_serves_stale_marked(
    env: Env, mode: str, reason: str, fwd_status: str
) -> None:
    original = await warm(env)
    env.clock.advance(10)
    if mode == "unreachable":
        env.rig.qbo_url = f"http://127.0.0.1:{free_port()}"
    else:
        env.qbo.mode = mode
    resp = await env.client.get(READ)
    assert resp.status == 200
    assert await resp.json() == original
    assert resp.headers["Age"] == "10"
    assert resp.headers["X-QBO-Gateway-Degraded"] == reason
    assert (
        resp.headers["Cache-Status"]
        == f"qbo-gateway; fwd=stale{fwd_status}; ttl=-10; detail={reason}"
    )
    assert env.sample("qbo_gateway_stale_served_total", {"reason": reason}) == 1
    assert env.observer.stale == [(REALM_A, reason, 10.0)]


async def test_no_cache_request_gets_the_error_not_stale_data(env: Env) -> None:
    await warm(env)
    env.rig.refusal = CircuitOpen(retry_after=30)
    resp = await env.client.get(READ, headers={"Cache-Control": "max-age=0, no-cache"})
    assert resp.status == 503
    assert resp.headers["X-QBO-Gateway-Error"] == "GW-CIRCUIT-OPEN"
    assert "X-QBO-Gateway-Degraded" not in resp.headers
    assert env.observer.stale == []


async def test_no_store_request_stores_nothing(env: Env) -> None:
    resp = await env.client.get(READ, headers={"Cache-Control": "no-store"})
    assert resp.status == 200
    assert resp.headers["Cache-Status"] == "qbo-gateway; fwd=uri-miss"
    env.rig.refusal = CircuitOpen()
    assert (await env.client.get(READ)).status == 503


async def test_cached_read_survives_circuit_until_older_than_stale_window(env: Env) -> None:
    original = await warm(env)
    env.rig.refusal = CircuitOpen(retry_after=30)
    env.clock.advance(STALE - 1)
    resp = await env.client.get(READ)
    assert resp.status == 200 and await resp.json() == original
    assert resp.headers["X-QBO-Gateway-Degraded"] == "circuit-open"
    assert resp.headers["Age"] == str(int(STALE - 1))
    env.clock.advance(1)
    resp = await env.client.get(READ)
    assert resp.status == 503
    assert resp.headers["X-QBO-Gateway-Error"] == "GW-CIRCUIT-OPEN"
    assert env.sample("qbo_gateway_stale_served_total", {"reason": "circuit-open"}) == 1


async def test_writes_are_never_answered_from_the_cache(env: Env) -> None:
    path = f"/v3/company/{REALM_A}/invoice"
    ok = await env.client.post(path, data=b'{"Line":[]}')
    assert ok.status == 200
    assert ok.headers["Cache-Status"] == "qbo-gateway; fwd=bypass"
    env.rig.refusal = CircuitOpen()
    resp = await env.client.post(path, data=b'{"Line":[]}')
    assert resp.status == 503
    assert "X-QBO-Gateway-Degraded" not in resp.headers


async def test_post_query_is_a_read_keyed_by_its_body(env: Env) -> None:
    path = f"/v3/company/{REALM_A}/query"
    first = await env.client.post(path, data=b"select * from Invoice")
    assert first.headers["Cache-Status"] == "qbo-gateway; fwd=uri-miss; stored"
    env.rig.refusal = CircuitOpen()
    hit = await env.client.post(path, data=b"select * from Invoice")
    assert hit.headers["X-QBO-Gateway-Degraded"] == "circuit-open"
    other = await env.client.post(path, data=b"select * from Customer")
    assert other.status == 503


async def test_errors_and_faults_inside_200_are_not_stored(env: Env) -> None:
    for mode in ("error500", "throttle429", "fault200"):
        env.qbo.mode = mode
        resp = await env.client.get(READ)
        assert resp.headers["Cache-Status"] == "qbo-gateway; fwd=uri-miss"
    env.qbo.mode = "ok"
    env.rig.refusal = CircuitOpen()
    assert (await env.client.get(READ)).status == 503
    assert env.sample("qbo_gateway_cache_events_total", {"event": "skip"}) == 3
    assert env.sample("qbo_gateway_cache_events_total", {"event": "store"}) == 0


async def test_response_over_entry_bound_is_not_stored(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    async for env in make_env("memory", redis_server, redis_prefix, max_entry_bytes=20):
        resp = await env.client.get(READ)
        assert resp.headers["Cache-Status"] == "qbo-gateway; fwd=uri-miss"
        env.rig.refusal = CircuitOpen()
        assert (await env.client.get(READ)).status == 503


async def test_requestid_and_minorversion_do_not_split_stored_reads(env: Env) -> None:
    await warm(env, f"/v3/company/{REALM_A}/invoice/7?minorversion=75&requestid=a&b=1&a=2")
    env.rig.refusal = CircuitOpen()
    resp = await env.client.get(f"/v3/company/{REALM_A}/invoice/7?a=2&requestid=zz&b=1")
    assert resp.headers["X-QBO-Gateway-Degraded"] == "circuit-open"
    assert (await env.client.get(f"/v3/company/{REALM_A}/invoice/7?a=3&b=1")).status == 503


async def test_hit_miss_store_counters(env: Env) -> None:
    await warm(env)
    await env.client.get(READ)
    assert env.sample("qbo_gateway_cache_events_total", {"event": "miss"}) == 1
    assert env.sample("qbo_gateway_cache_events_total", {"event": "hit"}) == 1
    assert env.sample("qbo_gateway_cache_events_total", {"event": "store"}) == 2


# --- tenant isolation -------------------------------------------------------------------


async def test_one_realms_read_is_never_served_for_another(env: Env) -> None:
    await warm(env)
    env.rig.refusal = CircuitOpen()
    other = await env.client.get(READ.replace(REALM_A, REALM_B))
    assert other.status == 503
    assert "X-QBO-Gateway-Degraded" not in other.headers
    same = await env.client.get(READ)
    assert same.headers["X-QBO-Gateway-Degraded"] == "circuit-open"


def test_keys_differ_by_realm_and_every_part_of_the_read() -> None:
    key = key_for
    base = key(REALM_A, "GET", "/v3/company/1111/invoice/7", [("a", "1")], b"", None)
    assert base.realm_id == REALM_A
    other_realm = key(REALM_B, "GET", "/v3/company/1111/invoice/7", [("a", "1")], b"", None)
    # The realm is in the digest too, not only beside it: scoping does not rest on one layer.
    assert other_realm.digest != base.digest
    assert key(REALM_A, "POST", "/v3/company/1111/invoice/7", [("a", "1")], b"", None) != base
    assert key(REALM_A, "GET", "/v3/company/1111/invoice/8", [("a", "1")], b"", None) != base
    assert key(REALM_A, "GET", "/v3/company/1111/invoice/7", [("a", "2")], b"", None) != base
    assert key(REALM_A, "GET", "/v3/company/1111/invoice/7", [("a", "1")], b"x", None) != base
    assert (
        key(REALM_A, "GET", "/v3/company/1111/invoice/7", [("a", "1")], b"", "application/xml")
        != base
    )
    # Unambiguous encoding: moving a character between name and value changes the key.
    assert key(REALM_A, "GET", "/p", [("ab", "c")], b"", None) != key(
        REALM_A, "GET", "/p", [("a", "bc")], b"", None
    )
    same = key(
        REALM_A,
        "GET",
        "/v3/company/1111/invoice/7",
        [("RequestId", "r1"), ("a", "1"), ("minorversion", "70")],
        b"",
        "application/json",
    )
    assert same == base


def test_is_read() -> None:
    assert is_read("GET", "invoice/7")
    assert is_read("get", "reports/ProfitAndLoss")
    assert is_read("POST", "query")
    assert is_read("POST", "Query/")
    assert not is_read("POST", "invoice")
    assert not is_read("POST", "invoice?operation=delete")
    assert not is_read("POST", "batch")
    assert not is_read("DELETE", "invoice/7")
    assert not is_read("PUT", "query")


def test_cache_control_directives() -> None:
    assert allows_stale(None) and allows_stale("max-age=10") and allows_fresh("no-store")
    assert not allows_stale("No-Cache") and not allows_fresh("max-age=10 , no-cache")
    assert allows_stale("max-age=0") and not allows_fresh("max-age=0")


def test_degraded_reason_mapping() -> None:
    assert degraded_reason(CircuitOpen()) == "circuit-open"
    assert degraded_reason(RateLimited()) == "rate-limited"
    assert degraded_reason(UpstreamTimeout()) == "upstream-timeout"
    assert degraded_reason(UpstreamUnavailable()) == "upstream-error"
    assert degraded_reason(ReconnectRequired()) == "reconnect-required"
    assert degraded_reason(GatewayError()) is None
    assert degraded_reason_for_upstream(503) == "upstream-error"
    assert degraded_reason_for_upstream(200, b'{"Fault":{"Error":[{"code":"6002"}]}}') == (
        "upstream-error"
    )
    assert degraded_reason_for_upstream(400) is None
    assert degraded_reason_for_upstream(401) is None
    assert degraded_reason_for_upstream(200, b"{}") is None


# --- freshness --------------------------------------------------------------------------


async def test_fresh_entry_is_served_without_calling_qbo(fresh_env: Env) -> None:
    env = fresh_env
    original = await warm(env)
    env.clock.advance(20.5)
    resp = await env.client.get(READ)
    assert resp.status == 200 and await resp.json() == original
    assert resp.headers["Cache-Status"] == "qbo-gateway; hit; ttl=39"
    assert resp.headers["Age"] == "20"
    assert "X-QBO-Gateway-Degraded" not in resp.headers
    assert env.qbo.calls == 1
    env.clock.advance(40)  # no longer fresh: QBO is asked again
    resp = await env.client.get(READ)
    assert resp.headers["Cache-Status"] == "qbo-gateway; fwd=stale; stored"
    assert env.qbo.calls == 2


async def test_no_cache_request_skips_a_fresh_entry(fresh_env: Env) -> None:
    await warm(fresh_env)
    resp = await fresh_env.client.get(READ, headers={"Cache-Control": "no-cache"})
    assert resp.headers["Cache-Status"] == "qbo-gateway; fwd=request; stored"
    assert fresh_env.qbo.calls == 2


async def test_write_ends_freshness_but_read_stays_servable_stale(fresh_env: Env) -> None:
    env = fresh_env
    original = await warm(env)
    other_realm = await warm(env, READ.replace(REALM_A, REALM_B))
    write = await env.client.post(f"/v3/company/{REALM_A}/invoice", data=b"{}")
    assert write.status == 200
    resp = await env.client.get(READ)  # not fresh anymore: QBO is asked
    assert resp.headers["Cache-Status"] == "qbo-gateway; fwd=stale; stored"
    assert (await resp.json())["call"] == 4
    # Another realm's reads keep their freshness.
    resp = await env.client.get(READ.replace(REALM_A, REALM_B))
    assert resp.headers["Cache-Status"].startswith("qbo-gateway; hit; ttl=")
    assert await resp.json() == other_realm
    assert env.qbo.calls == 4
    assert original["call"] == 1


async def test_write_ends_freshness_and_old_entry_is_still_stale_servable(
    fresh_env: Env,
) -> None:
    env = fresh_env
    original = await warm(env)
    await env.client.post(f"/v3/company/{REALM_A}/invoice", data=b"{}")
    env.rig.refusal = CircuitOpen()
    resp = await env.client.get(READ)
    assert resp.headers["X-QBO-Gateway-Degraded"] == "circuit-open"
    assert await resp.json() == original


async def test_read_that_raced_a_write_is_not_stored_as_fresh(fresh_env: Env) -> None:
    env = fresh_env
    env.qbo.hold = asyncio.Event()
    read = asyncio.create_task(env.client.get(READ))
    await asyncio.wait_for(env.qbo.arrived.wait(), 5)
    # The write completes while the read's answer (from before the write) is in flight.
    await env.cache.end_freshness(REALM_A)
    env.qbo.hold.set()
    first = await read
    assert first.headers["Cache-Status"] == "qbo-gateway; fwd=uri-miss; stored"
    resp = await env.client.get(READ)
    assert resp.headers["Cache-Status"] == "qbo-gateway; fwd=stale; stored"
    assert env.qbo.calls == 2


async def test_concurrent_fresh_misses_share_one_upstream_call(fresh_env: Env) -> None:
    env = fresh_env
    env.qbo.hold = asyncio.Event()
    env.rig.lookups_target = 20
    calls = [asyncio.create_task(env.client.get(READ)) for _ in range(20)]
    # Every request has missed and joined (or started) the flight before QBO answers.
    await asyncio.wait_for(env.rig.lookups_reached.wait(), 5)
    await asyncio.wait_for(env.qbo.arrived.wait(), 5)
    env.qbo.hold.set()
    responses = await asyncio.gather(*calls)
    bodies = [await r.json() for r in responses]
    assert env.qbo.calls == 1
    assert all(r.status == 200 for r in responses)
    assert all(b == bodies[0] for b in bodies)
    assert env.sample("qbo_gateway_cache_events_total", {"event": "store"}) == 1


async def test_single_flight_shares_failure_and_survives_a_leaving_caller() -> None:
    key = key_for(REALM_A, "GET", "/p", [], b"", None)
    gate = asyncio.Event()
    runs = 0

    async def fetch() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        raise UpstreamUnavailable()

    flights: SingleFlight[object, int] = SingleFlight("test")
    leaver = asyncio.create_task(flights.run(key, fetch))
    stayer = asyncio.create_task(flights.run(key, fetch))
    await asyncio.sleep(0)
    leaver.cancel()
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(UpstreamUnavailable):
        await stayer
    assert runs == 1

    # The flight is over: the next miss calls again.
    async def ok() -> int:
        return 7

    assert await flights.run(key, ok) == 7


# --- the backend failing ----------------------------------------------------------------


async def test_redis_down_is_a_miss_and_never_fails_the_request(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    async for env in make_env("memory", redis_server, redis_prefix, fresh=30):
        down = make_redis(f"redis://127.0.0.1:{free_port()}/0")
        env.cache.backend = RedisCacheBackend(down, RedisKeys(redis_prefix))
        try:
            resp = await env.client.get(READ)
            assert resp.status == 200
            assert resp.headers["Cache-Status"] == "qbo-gateway; fwd=uri-miss"
            write = await env.client.post(f"/v3/company/{REALM_A}/invoice", data=b"{}")
            assert write.status == 200
            env.rig.refusal = CircuitOpen()
            assert (await env.client.get(READ)).status == 503
            assert env.sample("qbo_gateway_cache_events_total", {"event": "miss"}) == 2
        finally:
            await down.aclose()


async def test_corrupt_redis_entry_is_a_miss(redis_server: RedisServer, redis_prefix: str) -> None:
    async for env in make_env("redis", redis_server, redis_prefix):
        key = key_for(REALM_A, "GET", "/v3/company/1111/invoice/7", [], b"", None)
        client = make_redis(redis_server.url)
        try:
            await client.set(RedisKeys(redis_prefix).cache_entry(REALM_A, key.digest), b"junk")
        finally:
            await client.aclose()
        found = await env.cache.lookup(key)
        assert found.entry is None


async def test_stale_response_refuses_an_unknown_reason(env: Env) -> None:
    await warm(env)
    key = key_for(
        REALM_A, "GET", "/v3/company/1111/invoice/7", [("minorversion", "75")], b"", "*/*"
    )  # aiohttp's client sends Accept: */*
    found = await env.cache.lookup(key)
    assert found.entry is not None
    with pytest.raises(ValueError, match="unknown degraded reason"):
        env.cache.stale_response(found.entry, "because")


async def test_write_while_freshness_is_off_still_ends_freshness(env: Env) -> None:
    """A replica or restart with freshness on must not see pre-write reads as fresh."""
    await warm(env)
    await env.client.post(f"/v3/company/{REALM_A}/invoice", data=b"{}")
    with_freshness = ResponseCache(
        env.cache.backend,
        clock=env.clock,
        metrics=env.metrics,
        observer=env.observer,
        fresh_seconds=60,
        stale_seconds=STALE,
        max_entry_bytes=1 << 20,
    )
    key = key_for(REALM_A, "GET", "/v3/company/1111/invoice/7", [], b"", "*/*")
    found = await with_freshness.lookup(key)
    assert found.entry is not None
    assert not with_freshness.fresh(found.entry)
    assert with_freshness.servable_stale(found.entry)


async def test_in_process_cache_stays_in_bound_while_10000_reads_pass() -> None:
    clock = ManualClock()
    metrics = Metrics(CollectorRegistry())
    bound = 256 * 1024
    backend = MemoryCacheBackend(max_bytes=bound, clock=clock, metrics=metrics)
    cache = ResponseCache(
        backend,
        clock=clock,
        metrics=metrics,
        observer=NullObserver(),
        fresh_seconds=0,
        stale_seconds=STALE,
        max_entry_bytes=4096,
    )
    headers = {"Content-Type": "application/json", "intuit_tid": "t", "Set-Cookie": "a=b"}
    for i in range(10_000):
        key = key_for(REALM_A, "GET", f"/v3/company/1111/invoice/{i}", [], b"", None)
        body = b'{"Invoice":{"Id":"%d","pad":"%s"}}' % (i, b"x" * (i % 2000))
        assert await cache.store(key, 200, headers, body, request_cache_control=None)
        assert backend.bytes_held <= bound
        if i % 100 == 0:  # reading the registry is slow; the gauge follows every put
            assert metrics.registry.get_sample_value("qbo_gateway_cache_bytes") == (
                backend.bytes_held
            )
    assert backend.bytes_held > bound * 0.9
    last = await cache.lookup(
        key_for(REALM_A, "GET", "/v3/company/1111/invoice/9999", [], b"", None)
    )
    assert last.entry is not None
    # Only content headers travel with a stored read.
    assert last.entry.headers == (("Content-Type", "application/json"),)
    assert (
        metrics.registry.get_sample_value("qbo_gateway_cache_events_total", {"event": "evict"}) or 0
    ) > 9_000
