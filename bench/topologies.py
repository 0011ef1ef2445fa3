"""Requests per second through one gateway on each Redis topology, side by side in one run.

Starts the QBO simulator as a process, then one gateway process at a time on: a standalone
redis-server, a Sentinel-managed master (master + replica + 3 sentinels), a 3-master
3-replica Redis Cluster, and a TLS server with an ACL user; each gets the same GET at a
fixed concurrency for a fixed time. Prints req/s, p50 and p99 per topology.

    .venv/bin/python bench/topologies.py --duration 5 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qbo_gateway.state.topology import RedisTopology  # noqa: E402 - after the path tweak
from tests.redis_server import RedisServer, free_port  # noqa: E402
from tests.redis_topologies import (  # noqa: E402
    RedisClusterSet,
    SentinelSet,
    tls_acl_server,
    tls_target,
)
from tests.tls_files import make_tls_files  # noqa: E402

REALM = "9130349226472226"
EXE = [sys.executable, "-m", "qbo_gateway"]


async def load(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                async with s.get(url) as resp:
                    await resp.read()
                    errors += resp.status != 200
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "errors": errors,
    }


async def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


def start_simulator(port: int) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [*EXE, "simulator", "--port", str(port), "--realm", REALM, "--print-tokens"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    while line := proc.stdout.readline():
        if line.startswith("{"):
            return proc, json.loads(line)
    raise RuntimeError("simulator exited")


def spawn_gateway(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*EXE, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def topology_env(t: RedisTopology) -> dict[str, str]:
    env = {"QBO_REDIS_MODE": t.mode}
    if t.url:
        env["QBO_REDIS_URL"] = t.url
    if t.sentinels:
        env["QBO_REDIS_SENTINELS"] = ",".join(f"{h}:{p}" for h, p in t.sentinels)
    if t.ca_file:
        env["QBO_REDIS_CA_FILE"] = t.ca_file
    return env


async def run_gateway(
    topology: RedisTopology, sim_url: str, tokens: dict[str, str], seconds: float, conc: int
) -> dict[str, float]:
    proxy_port, ops_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QBO_")}
    env.update(
        {
            "QBO_CLIENT_ID": "sim-client",
            "QBO_CLIENT_SECRET": "sim-secret",
            "QBO_API_BASE_URL": sim_url,
            "QBO_TOKEN_URL": f"{sim_url}/oauth2/v1/tokens/bearer",
            "QBO_REALM_ID": REALM,
            "QBO_ACCESS_TOKEN": tokens["access_token"],
            "QBO_REFRESH_TOKEN": tokens["refresh_token"],
            "QBO_ACCESS_TOKEN_EXPIRES_AT": str(tokens["access_expires_at"]),
            "QBO_STATE_DIR": tempfile.mkdtemp(prefix="qbogw-bench-"),
            "QBO_PROXY_PORT": str(proxy_port),
            "QBO_OPS_PORT": str(ops_port),
            "QBO_OPS_HOST": "127.0.0.1",
            "QBO_LOG_LEVEL": "warning",
            "QBO_MONITOR_AUTOSTART": "false",
            "QBO_TOKEN_KEYS": Fernet.generate_key().decode(),
            # The gateway's own cost on each topology, not QBO's limits.
            "QBO_RATE_LIMIT_PER_MINUTE": "100000000",
            "QBO_RATE_LIMIT_PER_SECOND": "1000000",
            "QBO_CONCURRENCY_LIMIT": "10000",
            **topology_env(topology),
        }
    )
    proc = spawn_gateway(env)
    try:
        await wait_ready(f"http://127.0.0.1:{ops_port}/readyz")
        url = f"http://127.0.0.1:{proxy_port}/v3/company/{REALM}/companyinfo/{REALM}"
        await load(url, 0.5, conc)  # warm up: connections, scripts, slot map
        return await load(url, seconds, conc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def topologies() -> list[tuple[str, Callable[[], RedisTopology], Callable[[], None]]]:
    """(name, start -> topology, stop) for each topology, started one at a time."""
    out: list[tuple[str, Callable[[], RedisTopology], Callable[[], None]]] = []
    single = RedisServer()

    def start_single() -> RedisTopology:
        single.start()
        return RedisTopology(url=single.url)

    out.append(("standalone", start_single, single.cleanup))
    sentinel = SentinelSet()

    def start_sentinel() -> RedisTopology:
        sentinel.start()
        return sentinel.target.topology

    out.append(("sentinel", start_sentinel, sentinel.cleanup))
    cluster = RedisClusterSet()

    def start_cluster() -> RedisTopology:
        cluster.start()
        return cluster.target.topology

    out.append(("cluster (3+3)", start_cluster, cluster.cleanup))
    tls = make_tls_files(Path(tempfile.mkdtemp(prefix="qbogw-tls-")))
    secured = tls_acl_server(tls)

    def start_tls() -> RedisTopology:
        secured.start()
        return tls_target(secured, tls).topology

    out.append(("standalone TLS + ACL", start_tls, secured.cleanup))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    sim_port = free_port()
    sim, tokens = start_simulator(sim_port)
    sim_url = f"http://127.0.0.1:{sim_port}"
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        for name, start, stop in topologies():
            try:
                topology = start()
                rows.append(
                    (
                        name,
                        await run_gateway(
                            topology, sim_url, tokens, args.duration, args.concurrency
                        ),
                    )
                )
            finally:
                stop()
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    print(f"\nconcurrency {args.concurrency}, {args.duration:.0f} s each, {os.cpu_count()} cores")
    print(f"{'topology':<24}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, r in rows:
        print(
            f"{name:<24}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8.0f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
