"""What the gateway's memory does with many realms, many unknown realm ids, many reads.

One embedded gateway process (nginx as QBO), its resident memory read from /proc:

1. idle, with `--realms` realms in its token store;
2. after serving each of those realms (a companyinfo read each);
3. after `--unknown` requests for realm ids it has no tokens for (they must leave nothing);
4. after `--reads` distinct small reads stored in its cache: RSS growth against the cache's
   own byte gauge (the bound is only worth what the gauge counts).

    .venv/bin/python bench/memory.py [--realms 10000] [--unknown 100000] [--reads 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import Fleet, gateway_env, rss_mb
from qbo_gateway.tokens.crypto import TokenCipher
from qbo_gateway.tokens.records import TokenRecord
from qbo_gateway.tokens.store_sqlite import SqliteTokenStore

KNOWN_PREFIX = "46100000"  # known realms: 46100000 + 8 digits
UNKNOWN_PREFIX = "46200000"


def realm(prefix: str, i: int) -> str:
    return f"{prefix}{i:08d}"


async def seed(state: Path, keys: str, count: int) -> None:
    store = SqliteTokenStore.in_dir(state, TokenCipher(keys))
    expires = time.time() + 86400
    for i in range(count):
        record = TokenRecord(
            realm_id=realm(KNOWN_PREFIX, i),
            access_token=f"bench-access-{i:08d}-0123456789",
            refresh_token=f"bench-refresh-{i:08d}-0123456789",
            access_expires_at=expires,
        )
        await store.put(record, expected_version=None)
    await store.close()


async def _drive(base: str, paths: list[str]) -> None:
    async with aiohttp.ClientSession(base) as session:
        queue = iter(paths)

        async def worker() -> None:
            for path in queue:
                async with session.get(path) as resp:
                    await resp.read()

        await asyncio.gather(*(worker() for _ in range(16)))


def drive(base: str, paths: list[str]) -> float:
    """Send one request per path (16 at a time); returns the seconds it took."""
    started = time.monotonic()
    asyncio.run(_drive(base, paths))
    return time.monotonic() - started


def cache_gauge(ops: str) -> float:
    with urllib.request.urlopen(f"{ops}/metrics", timeout=10) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    found = re.search(r"^qbo_gateway_cache_bytes\s+([\d.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) / 2**20 if found else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--realms", type=int, default=10_000)
    parser.add_argument("--unknown", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=100_000)
    args = parser.parse_args()
    fleet = Fleet()
    try:
        _, upstream = fleet.nginx()
        state = fleet.tempdir("qbogw-mem-state-")
        env = gateway_env(upstream, state, 0, 0)
        asyncio.run(seed(state, env["QBO_TOKEN_KEYS"], args.realms))
        extra = {"QBO_TOKEN_KEYS": env["QBO_TOKEN_KEYS"], "QBO_STATE_DIR": str(state)}
        extra["QBO_LOG_LEVEL"] = "warning"
        proc, base, ops = fleet.gateway(upstream, extra=extra)
        print(f"idle, {args.realms} realms stored:        RSS {rss_mb(proc.pid):7.1f} MB")
        served = [f"/v3/company/{realm(KNOWN_PREFIX, i)}/companyinfo/1" for i in range(args.realms)]
        took = drive(base, served)
        print(
            f"after serving {args.realms} realms:         RSS {rss_mb(proc.pid):7.1f} MB"
            f"  ({took:.0f} s)"
        )
        before = rss_mb(proc.pid)
        unknown = [
            f"/v3/company/{realm(UNKNOWN_PREFIX, i)}/companyinfo/1" for i in range(args.unknown)
        ]
        took = drive(base, unknown)
        after = rss_mb(proc.pid)
        print(
            f"after {args.unknown} unknown realm ids:   RSS {after:7.1f} MB"
            f"  ({after - before:+.1f} MB, {took:.0f} s)"
        )
        gauge0 = cache_gauge(ops)
        one = realm(KNOWN_PREFIX, 0)
        took = drive(base, [f"/v3/company/{one}/companyinfo/1?n={i}" for i in range(args.reads)])
        grown, gauge = rss_mb(proc.pid) - after, cache_gauge(ops) - gauge0
        print(
            f"after {args.reads} distinct reads cached: RSS {grown:+7.1f} MB, cache gauge "
            f"{gauge:+.1f} MB (gauge/RSS growth {gauge / grown if grown else float('nan'):.2f})"
            f"  ({took:.0f} s)"
        )
    finally:
        fleet.stop()


if __name__ == "__main__":
    main()
