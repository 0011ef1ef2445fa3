"""How long /health/summary and /health/dashboard take with 10,000 realms and a full day.

Builds the health subsystem over 10,000 fake realms (tokens, traffic, some alerts and past
incidents), fills 24 hours of per-minute history buckets for every realm and for the fleet,
serves the health API on a real local port and times each route over HTTP. It reports the
bytes a realm's day of buckets takes in process (and the process's resident growth).
`--examples` prints one example of each JSON shape instead (for the README).

    .venv/bin/python bench/health_10k.py [--realms 10000] [--runs 20] [--examples]
    .venv/bin/python bench/health_10k.py --redis redis://127.0.0.1:<port>/0  (a scratch one)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qbo_gateway.admission.records import BreakerState, RealmLoad
from qbo_gateway.clock import ManualClock
from qbo_gateway.faults import FaultClass
from qbo_gateway.health.bucket_ring import BucketRing
from qbo_gateway.health.buckets import Series
from qbo_gateway.health.store_memory import MemoryHealthStore
from qbo_gateway.health.store_redis import RedisHealthStore
from qbo_gateway.health.wiring import Health, HealthOptions, HealthSources, build_health
from qbo_gateway.metrics import Metrics
from qbo_gateway.ops.health_api import add_health_routes
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from qbo_gateway.tokens.records import TokenStatus

DAY = 86400.0


def build(realms: int) -> tuple[Health, ManualClock, list[str]]:
    clock = ManualClock()
    ids = [str(9_100_000_000_000_000 + i) for i in range(realms)]
    now = clock.now()
    tokens = {
        r: TokenStatus(
            realm_id=r,
            access_expires_at=now + 3600,
            refresh_expires_at=now + (10 if i % 97 == 0 else 90) * DAY,
            refresh_hard_expires_at=None,
            needs_reconnect=i % 1000 == 0,
            version=1,
        )
        for i, r in enumerate(ids)
    }

    async def token_statuses() -> list[TokenStatus]:
        return list(tokens.values())

    async def token_status(realm_id: str) -> TokenStatus | None:
        return tokens.get(realm_id)

    async def load(realm_id: str) -> RealmLoad:
        return RealmLoad(BreakerState.CLOSED, 0, None, None, 0, 0, 0, 0)

    async def probe(realm_id: str) -> None:
        return None

    monitor = build_health(
        HealthOptions(autostart=False),
        store=MemoryHealthStore(history_seconds=DAY),
        clock=clock,
        metrics=Metrics(CollectorRegistry()),
        sources=HealthSources(
            token_statuses=token_statuses,
            token_status=token_status,
            load=load,
            probe=probe,
        ),
    )
    return monitor, clock, ids


def fill_day(monitor: Health, clock: ManualClock, ids: list[str]) -> None:
    """A full day of minute buckets: one realm's made from counters, the others cloned
    (filling 14 million buckets one by one would take minutes), the fleet's summed."""
    store = monitor.store
    assert isinstance(store, MemoryHealthStore)
    width = store.bucket_seconds
    last = int(clock.now() // width)
    series: Series = {}
    for bucket in range(last - 1439, last + 1):
        counts = {"req": 21, "ok": 20, "fail": 1, "lat_ms": 20 * 310, "h2": 14, "h3": 6}
        if bucket % 60 == 0:
            counts.update({"tok_ok": 1, "down_ms": 15_000, "br_open": 1, "br_close": 1})
        series[bucket] = counts
    template = ids[0]
    store._rings.pop(template, None)
    loop_add(store, {template: series})
    ring = store._rings[template]
    tracemalloc.start()
    for realm in ids[1:]:
        store._rings[realm] = copy.deepcopy(ring)
        if realm == ids[min(200, len(ids) - 1)]:
            allocated, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"allocated per realm's day of buckets: {allocated / 200:.0f} bytes")
    fleet: Series = {b: {k: v * len(ids) for k, v in c.items()} for b, c in series.items()}
    for bucket, counts in fleet.items():
        store._fleet.add(bucket, counts)


def loop_add(store: MemoryHealthStore, realms: dict[str, Series]) -> None:
    for realm, series in realms.items():
        for bucket, counts in series.items():
            store._rings.setdefault(realm, BucketRing(store._slots)).add(bucket, counts)


def feed(monitor: Health, clock: ManualClock, ids: list[str]) -> None:
    """A day of traffic in 24 steps: every realm busy, a few failing and recovering."""
    for hour in range(24):
        for i, realm in enumerate(ids):
            for n in range(3):
                monitor.observer.request_finished(
                    realm,
                    outcome="upstream",
                    status=200,
                    latency=0.15 + (i % 13) * 0.05 + n * 0.1 + (6.0 if i % 211 == 0 else 0.0),
                    fault=FaultClass.OK,
                )
            if i % 50 == hour % 50:  # a short outage, recovered next hour
                for _ in range(3):
                    monitor.observer.request_finished(
                        realm,
                        outcome="error",
                        status=502,
                        latency=0.1,
                        fault=FaultClass.UPSTREAM_FAILURE,
                    )
        clock.advance(3600)
    for i, realm in enumerate(ids):
        if i % 400 == 0:
            monitor.observer.breaker_changed(realm, BreakerState.OPEN)
        if i % 333 == 0:
            monitor.observer.throttled(realm, until=clock.now() + 60)


async def timed(
    session: aiohttp.ClientSession, url: str, runs: int
) -> tuple[list[float], list[float], int]:
    """Wall and CPU seconds per request (CPU: this process, server and client together;
    on a shared machine the wall time mostly measures the neighbours)."""
    times: list[float] = []
    cpu: list[float] = []
    size = 0
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        async with session.get(url) as resp:
            body = await resp.read()
            assert resp.status == 200, resp.status
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        size = len(body)
    return times, cpu, size


def describe(name: str, times: list[float], cpu: list[float], size: int) -> str:
    ms = sorted(t * 1000 for t in times)
    p95 = ms[max(0, round(0.95 * len(ms)) - 1)]
    return (
        f"{name:<30} runs={len(ms):<3} median={statistics.median(ms):7.1f} ms  "
        f"p95={p95:7.1f} ms  cpu median={statistics.median(cpu) * 1000:6.1f} ms  "
        f"body={size / 1024:7.1f} KiB"
    )


async def redis_bytes(url: str, width: float) -> None:
    """Bytes a realm's full day of buckets takes in Redis (MEMORY USAGE of its keys).
    Writes 20 realms under the prefix `qbogw-bench` and deletes them afterwards."""
    redis = make_redis(url)
    keys = RedisKeys("qbogw-bench")
    store = RedisHealthStore(redis, history_seconds=DAY, keys=keys, bucket_seconds=width)
    now = 1_800_000_000.0
    last = int(now // width)
    per = width / 60
    series: Series = {
        b: {"req": int(21 * per), "ok": int(20 * per), "fail": int(per), "h2": int(14 * per)}
        | {"h3": int(6 * per), "lat_ms": int(6200 * per)}
        for b in range(last - int(DAY // width) + 1, last + 1)
    }
    realms = [str(9_100_000_000_000_000 + i) for i in range(20)]
    try:
        started = time.perf_counter()
        await store.add_counts(dict.fromkeys(realms, series), {}, now=now)
        wrote = time.perf_counter() - started
        names = [k async for k in redis.scan_iter(match=keys.realm_key(realms[0], "hb:*"))]
        used = sum([await redis.memory_usage(k) or 0 for k in names])
        started = time.perf_counter()
        await store.realm_series(realms[0], first=min(series), last=last)
        read = time.perf_counter() - started
        print(
            f"redis, {width:g} s buckets: {len(names)} keys, {used} bytes per realm-day "
            f"(MEMORY USAGE); wrote 20 realm-days in {wrote:.1f} s, read one in "
            f"{read * 1000:.1f} ms"
        )
    finally:
        for realm in realms:
            found = [k async for k in redis.scan_iter(match=keys.realm_key(realm, "*"))]
            if found:
                await redis.delete(*found)
        await redis.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realms", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--examples", action="store_true")
    parser.add_argument("--redis", help="also measure a realm-day's bytes in this Redis")
    args = parser.parse_args()
    if args.redis:
        for width in (60.0, 300.0):
            await redis_bytes(args.redis, width)
        return

    monitor, clock, ids = build(3 if args.examples else args.realms)
    await monitor.open(background=False)
    await monitor.token_rules.refresh(force=True)
    started = time.perf_counter()
    feed(monitor, clock, ids)
    feed_seconds = time.perf_counter() - started
    await monitor.flush()
    started = time.perf_counter()
    fill_day(monitor, clock, ids)
    fill_seconds = time.perf_counter() - started
    store = monitor.store
    assert isinstance(store, MemoryHealthStore)
    app = web.Application()
    add_health_routes(app, monitor, admin_token=None)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}/health"
    try:
        async with aiohttp.ClientSession() as session:
            if args.examples:
                for path in ("summary", "dashboard", f"business/{ids[0]}", "alerts"):
                    async with session.get(f"{base}/{path}") as resp:
                        print(f"### GET /health/{path}\n")
                        print(json.dumps(await resp.json(), indent=2), "\n")
                return
            events = len(ids) * 24 * 3
            print(f"realms={len(ids)} fed {events} outcomes in {feed_seconds:.1f} s")
            print(
                f"24 h of minute buckets: {store.bucket_bytes(ids[1])} bytes per realm in its "
                f"ring arrays (filled in {fill_seconds:.1f} s)"
            )
            print(f"active alerts={len(monitor.alerts.active())}")
            for name in ("summary", "dashboard", f"business/{ids[7]}", "status-page"):
                first, _, _ = await timed(session, f"{base}/{name}", 1)
                times, cpu, size = await timed(session, f"{base}/{name}", args.runs)
                print(f"{'/health/' + name + ' first':<30} {first[0] * 1000:7.1f} ms")
                print(describe(f"/health/{name}", times, cpu, size))
            every = f"dashboard?limit={len(ids)}"
            times, cpu, size = await timed(session, f"{base}/{every}", args.runs)
            print(describe(f"/health/{every}", times, cpu, size))
    finally:
        await runner.cleanup()
        await monitor.close()


if __name__ == "__main__":
    asyncio.run(main())
