"""What the gateway's memory does with many realms, many unknown realm ids, many reads.

Resident memory (VmRSS from /proc) of real gateway processes, nginx as QBO:

1. what an idle process is made of: a bare interpreter, then each group of imports;
2. per mode (embedded: SQLite tokens, in-process health; Redis: a private redis-server):
   a gateway with no realms, then one with `--realms` stored realms, idle;
   after serving each of those realms (a companyinfo read each), then after `--settle`
   seconds idle (the periodic reads of every stored record settle the allocator);
   after `--unknown` requests for realm ids it has no tokens for (they must leave nothing);
3. embedded only: after `--reads` distinct small reads stored in its cache, RSS growth
   against the cache's own byte gauge (the bound is only worth what the gauge counts),
   then as many again past the bound (`--cache-mb`, the default 64): RSS must stay put;
4. what one realm's health state costs, measured in process with tracemalloc: served once,
   a day of 5-minute probes, a day of a request a minute;
5. `--trace`: the embedded gateway runs under tracemalloc (bench/traced_gateway.py) and the
   growth from idle to served is listed by source line, per realm (its RSS figures are then
   inflated by tracemalloc's own bookkeeping).

    .venv/bin/python bench/memory.py [--realms 10000] [--unknown 100000] [--reads 100000]
        [--mode both|embedded|redis] [--cache-mb 64] [--settle 150] [--trace] [--skip-imports]
        [--skip-components]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import ROOT, Fleet, gateway_env, rss_mb
from qbo_gateway.health.bucket_ring import BucketRing
from qbo_gateway.health.buckets import Counts
from qbo_gateway.health.recent_events import RecentEvents
from qbo_gateway.health.stats import RealmStats
from qbo_gateway.health.store_memory import RECENT_EVENTS, HistoryEntry
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from qbo_gateway.tokens.crypto import TokenCipher
from qbo_gateway.tokens.records import TokenRecord, TokenStore
from qbo_gateway.tokens.store_redis import RedisTokenStore
from qbo_gateway.tokens.store_sqlite import SqliteTokenStore
from tests.redis_server import RedisServer

KNOWN_PREFIX = "46100000"  # known realms: 46100000 + 8 digits
UNKNOWN_PREFIX = "46200000"
DAY = 86400
BUCKET = 300  # the default QBO_HEALTH_BUCKET_SECONDS


def realm(prefix: str, i: int) -> str:
    return f"{prefix}{i:08d}"


def line(what: str, mb: float, tail: str = "") -> None:
    print(f"  {what:<40} RSS {mb:7.1f} MB{tail}", flush=True)


async def seed(store: TokenStore, count: int) -> None:
    now = time.time()
    for i in range(count):
        record = TokenRecord(
            realm_id=realm(KNOWN_PREFIX, i),
            access_token=f"bench-access-{i:08d}-0123456789",
            refresh_token=f"bench-refresh-{i:08d}-0123456789",
            access_expires_at=now + DAY,
            updated_at=now,  # not due: the refresher leaves these realms alone
        )
        await store.put(record, expected_version=None)
    await store.close()


async def seed_sqlite(state: Path, keys: str, count: int) -> None:
    await seed(SqliteTokenStore.in_dir(state, TokenCipher(keys)), count)


async def seed_redis(url: str, keys: str, count: int) -> None:
    await seed(RedisTokenStore(make_redis(url), RedisKeys(), TokenCipher(keys)), count)


async def _drive(base: str, paths: list[str]) -> Counter[int]:
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession(base) as session:
        queue = iter(paths)

        async def worker() -> None:
            for path in queue:
                async with session.get(path) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

        await asyncio.gather(*(worker() for _ in range(16)))
    return statuses


def drive(base: str, paths: list[str], expect: int) -> float:
    """Send one request per path (16 at a time); returns the seconds it took. Every answer
    must have the status `expect` (a benchmark of refusals measures nothing)."""
    started = time.monotonic()
    statuses = asyncio.run(_drive(base, paths))
    if set(statuses) != {expect} and paths:
        raise RuntimeError(f"expected only {expect} answers, got {dict(statuses)}")
    return time.monotonic() - started


def cache_gauge(ops: str) -> float:
    with urllib.request.urlopen(f"{ops}/metrics", timeout=10) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    found = re.search(r"^qbo_gateway_cache_bytes\s+([\d.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) / 2**20 if found else float("nan")


# -- 1. imports ------------------------------------------------------------------------

IMPORT_STEPS = (
    ("interpreter", ""),
    ("+ aiohttp", "import aiohttp, aiohttp.web"),
    ("+ redis (asyncio, cluster, sentinel)", "import redis.asyncio, redis.asyncio.cluster"),
    ("+ pydantic, pydantic-settings", "import pydantic, pydantic_settings"),
    ("+ cryptography (Fernet)", "import cryptography.fernet"),
    ("+ prometheus_client, structlog", "import prometheus_client, structlog"),
    ("+ cachetools, yaml, sqlite3", "import cachetools, yaml, sqlite3"),
    ("+ qbo_gateway (app, serve)", "import qbo_gateway.app, qbo_gateway.commands.serve"),
)


def imports() -> None:
    print("what an idle process is made of (RSS after each step, cumulative):", flush=True)
    code = [
        "import os",
        "def rss_mb(pid):",
        "    for row in open(f'/proc/{pid}/status'):",
        "        if row.startswith('VmRSS:'):",
        "            return int(row.split()[1]) / 1024",
    ]
    for label, statement in IMPORT_STEPS:
        if statement:
            code.append(statement)
        code.append(f"print({label!r}, rss_mb(os.getpid()), flush=True)")
    out = subprocess.run(
        [sys.executable, "-c", "\n".join(code)], capture_output=True, text=True, check=True
    ).stdout
    previous = 0.0
    for row in out.splitlines():
        label, mb = row.rsplit(" ", 1)
        line(label, float(mb), f"  ({float(mb) - previous:+.1f})" if previous else "")
        previous = float(mb)


# -- 2, 3, 5. gateways -----------------------------------------------------------------


def traced_spawn(fleet: Fleet) -> None:
    """Make `fleet` start its gateways under tracemalloc (bench/traced_gateway.py)."""
    plain = fleet.spawn

    def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        if args[1:] == ["-m", "qbo_gateway", "serve"]:
            args = [sys.executable, "-X", "tracemalloc=1", str(ROOT / "bench/traced_gateway.py")]
        return plain(args, env)

    fleet.spawn = spawn  # type: ignore[method-assign]


def snapshot(proc: subprocess.Popen[bytes], path: Path) -> tracemalloc.Snapshot:
    path.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the traced gateway wrote no snapshot")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(path))


def report_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, per: int) -> None:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    growth = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    total = sum(s.size_diff for s in growth)
    print(f"  traced growth: {total / per:,.0f} bytes per realm; the lines above 100:")
    for stat in growth:
        if abs(stat.size_diff) / per < 100:
            continue
        frame = stat.traceback[0]
        where = frame.filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        print(
            f"    {stat.size_diff / per:8,.0f} B {stat.count_diff / per:6.2f} blocks  {where}:{frame.lineno}"
        )


def gateways(args: argparse.Namespace, mode: str) -> None:
    print(f"\n{mode} mode:", flush=True)
    fleet = Fleet()
    redis: RedisServer | None = None
    try:
        if args.trace and mode == "embedded":
            traced_spawn(fleet)
        _, upstream = fleet.nginx()
        state = fleet.tempdir("qbogw-mem-state-")
        keys = gateway_env(upstream, state, 0, 0)["QBO_TOKEN_KEYS"]
        extra = {"QBO_TOKEN_KEYS": keys, "QBO_STATE_DIR": str(state), "QBO_LOG_LEVEL": "warning"}
        extra["QBO_CACHE_MAX_BYTES"] = str(args.cache_mb * 2**20)
        snap = state / "tracemalloc.snapshot"
        extra_env = {"BENCH_SNAPSHOT": str(snap)}
        redis_url = None
        if mode == "redis":
            redis = RedisServer()
            redis.start()
            redis_url = redis.url
        # A gateway with no stored realm but the one from its environment.
        proc, _, _ = fleet.gateway(upstream, redis_url=redis_url, extra=extra | extra_env)
        time.sleep(2)
        line("idle, no realms stored", rss_mb(proc.pid))
        fleet.procs.remove(proc)
        proc.terminate()
        proc.wait(timeout=20)
        if redis_url:
            asyncio.run(seed_redis(redis_url, keys, args.realms))
        else:
            asyncio.run(seed_sqlite(state, keys, args.realms))
        proc, base, ops = fleet.gateway(upstream, redis_url=redis_url, extra=extra | extra_env)
        time.sleep(2)
        line(f"idle, {args.realms} realms stored", rss_mb(proc.pid))
        before = snapshot(proc, snap) if args.trace and mode == "embedded" else None
        served = [f"/v3/company/{realm(KNOWN_PREFIX, i)}/companyinfo/1" for i in range(args.realms)]
        took = drive(base, served, 200)
        time.sleep(2)  # the health history writer's flush
        cached = f", cache gauge {cache_gauge(ops):.1f} MB" if mode == "embedded" else ""
        line(f"after serving {args.realms} realms", rss_mb(proc.pid), f"  ({took:.0f} s{cached})")
        if before is not None:
            report_growth(before, snapshot(proc, snap), args.realms)
        if args.settle:
            # The token listing and the refresher read every stored record periodically;
            # the allocator's high-water mark from those reads is not the unknown ids'.
            time.sleep(args.settle)
            line(f"after {args.settle:.0f} s idle", rss_mb(proc.pid))
        start = rss_mb(proc.pid)
        unknown = [
            f"/v3/company/{realm(UNKNOWN_PREFIX, i)}/companyinfo/1" for i in range(args.unknown)
        ]
        took = drive(base, unknown, 404)
        after = rss_mb(proc.pid)
        line(
            f"after {args.unknown} unknown realm ids",
            after,
            f"  ({after - start:+.1f} MB, {took:.0f} s)",
        )
        if mode == "embedded" and args.reads:
            gauge0 = cache_gauge(ops)
            one = realm(KNOWN_PREFIX, 0)
            reads = [f"/v3/company/{one}/companyinfo/1?n={i}" for i in range(args.reads)]
            took = drive(base, reads, 200)
            now = rss_mb(proc.pid)
            grown, gauge = now - after, cache_gauge(ops) - gauge0
            ratio = gauge / grown if grown else float("nan")
            line(
                f"after {args.reads} distinct reads cached",
                now,
                f"  ({grown:+.1f} MB; cache gauge {gauge:+.1f} MB, gauge/RSS growth "
                f"{ratio:.2f}, {took:.0f} s)",
            )
            # As many again: past QBO_CACHE_MAX_BYTES the LRU evicts, and RSS must stay put.
            more = [f"/v3/company/{one}/companyinfo/1?m={i}" for i in range(args.reads)]
            took = drive(base, more, 200)
            later = rss_mb(proc.pid)
            line(
                f"after {args.reads} more distinct reads",
                later,
                f"  ({later - now:+.1f} MB; cache gauge {cache_gauge(ops):.1f} MB of a "
                f"{args.cache_mb} MB bound, {took:.0f} s)",
            )
    finally:
        fleet.stop()
        if redis is not None:
            redis.stop()
            redis.cleanup()


# -- 4. one realm's health state -------------------------------------------------------


def _probe(stats: RealmStats, ring: BucketRing, events: RecentEvents, rid: str, at: float) -> None:
    latency = 0.31
    stats.trim(at - DAY)
    stats.add(at, True, latency)
    counts: Counts = {"req": 1, "ok": 1, "chk_ok": 1, "lat_ms": 310, "h2": 1}
    ring.add(int(at // BUCKET), counts)
    entry = HistoryEntry(at, "check", True, 200, latency, "upstream")
    events.add(rid, [entry.row()], cutoff=at - DAY)


def _request(
    stats: RealmStats, ring: BucketRing, events: RecentEvents, rid: str, at: float
) -> None:
    latency = 0.12
    stats.trim(at - DAY)
    stats.add(at, True, latency)
    counts: Counts = {"req": 1, "ok": 1, "lat_ms": 120, "h1": 1}
    ring.add(int(at // BUCKET), counts)
    entry = HistoryEntry(at, "request", True, 200, latency, "upstream", live=True)
    events.add(rid, [entry.row()], cutoff=at - DAY)


Step = Callable[[RealmStats, BucketRing, RecentEvents, str, float], None]


PARTS = ("stats", "buckets", "events")


def health_cost(step: Step, every: float, count: int, realms: int = 500) -> dict[str, float]:
    """Bytes per realm of each part of the health state of `realms` realms fed `count` events
    `every` seconds apart (each part measured alone: the others are dropped as they go)."""
    cost: dict[str, float] = {}
    for part in PARTS:
        kept: list[object] = []
        tracemalloc.start()
        base = tracemalloc.take_snapshot()
        events = RecentEvents(RECENT_EVENTS)  # one for all realms, as in the store
        for n in range(realms):
            stats, ring = RealmStats(DAY / 96), BucketRing(DAY // BUCKET + 1)
            rid = str(9_100_000_000 + n)
            for i in range(count):
                step(stats, ring, events, rid, 1_800_000_000.0 + i * every)
            kept.append({"stats": stats, "buckets": ring, "events": None}[part])
        if part != "events":
            del events
        grown = tracemalloc.take_snapshot().compare_to(base, "filename")
        tracemalloc.stop()
        cost[part] = sum(s.size_diff for s in grown) / realms
        del kept
    cost["total"] = sum(cost.values())
    return cost


def components() -> None:
    print("\none realm's health state in process, bytes (tracemalloc, 500 realms each):")
    cases: list[tuple[str, Step, float, int]] = [
        ("served once", _request, 0.0, 1),
        ("a day of 5-minute probes", _probe, BUCKET, DAY // BUCKET),
        ("a day of a request a minute", _request, 60.0, DAY // 60),
    ]
    print(f"  {'':<30} {'stats':>8} {'buckets':>8} {'events':>8} {'total':>8}")
    for label, step, every, count in cases:
        cost = health_cost(step, every, count)
        print(
            f"  {label:<30} {cost['stats']:8,.0f} {cost['buckets']:8,.0f} "
            f"{cost['events']:8,.0f} {cost['total']:8,.0f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--realms", type=int, default=10_000)
    parser.add_argument("--unknown", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=100_000)
    parser.add_argument("--mode", choices=("both", "embedded", "redis"), default="both")
    parser.add_argument("--cache-mb", type=int, default=64, help="QBO_CACHE_MAX_BYTES in MiB")
    parser.add_argument("--settle", type=float, default=150.0, help="idle seconds after serving")
    parser.add_argument("--trace", action="store_true", help="tracemalloc growth by line")
    parser.add_argument("--skip-imports", action="store_true")
    parser.add_argument("--skip-components", action="store_true")
    args = parser.parse_args()
    if not args.skip_imports:
        imports()
    for mode in ("embedded", "redis"):
        if args.mode in ("both", mode):
            gateways(args, mode)
    if not args.skip_components:
        components()


if __name__ == "__main__":
    main()
