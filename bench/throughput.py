"""Requests per second through the gateway against straight to the simulator, one run.

Starts the QBO simulator and the gateway as separate processes (as in production, they do
not share an event loop with the load generator), drives the same GET at a fixed
concurrency for a fixed time through each path, and prints the figures side by side. With
`--mode redis` (or `both`) it also runs the gateway on a private redis-server and reports
Redis round trips per proxied request from `INFO commandstats`.

    .venv/bin/python bench/throughput.py --duration 5 --concurrency 16 --mode both
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402 - after the path tweak above

REALM = "9130349226472226"
EXE = [sys.executable, "-m", "qbo_gateway"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def load(
    url: str, headers: dict[str, str], seconds: float, concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "errors": errors,
    }


async def wait_ready(url: str, timeout: float = 20) -> None:
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
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("simulator exited")
        if line.startswith("{"):
            return proc, json.loads(line)


def start_gateway(env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("QBO_")}
    full.update(env)
    return subprocess.Popen(
        [*EXE, "serve"], env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


class RespCounter:
    """A loopback TCP relay in front of Redis that counts the commands clients send.

    INFO commandstats also counts commands that Lua scripts run inside the server, which
    are not round trips; counting at the wire counts only what the gateway really sends.
    """

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.by_command: dict[str, int] = {}
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def reset(self) -> None:
        self.by_command.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)

        async def upstream_to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        pump = asyncio.create_task(upstream_to_client())
        try:
            while True:
                header = await reader.readline()
                if not header:
                    break
                chunks = [header]
                if header.startswith(b"*"):
                    name = ""
                    for i in range(int(header[1:])):
                        size_line = await reader.readline()
                        data = await reader.readexactly(int(size_line[1:]) + 2)
                        chunks += [size_line, data]
                        if i == 0:
                            name = data[:-2].decode(errors="replace").upper()
                    self.by_command[name] = self.by_command.get(name, 0) + 1
                up_writer.write(b"".join(chunks))
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_writer.close()
            pump.cancel()


async def run_gateway(
    mode: str,
    sim_url: str,
    tokens: dict[str, str],
    seconds: float,
    concurrency: int,
    *,
    count_redis: bool = False,
) -> dict[str, float]:
    proxy_port, ops_port = free_port(), free_port()
    state = tempfile.mkdtemp(prefix="qbogw-bench-")
    env = {
        "QBO_CLIENT_ID": "sim-client",
        "QBO_CLIENT_SECRET": "sim-secret",
        "QBO_API_BASE_URL": sim_url,
        "QBO_TOKEN_URL": f"{sim_url}/oauth2/v1/tokens/bearer",
        "QBO_REALM_ID": REALM,
        "QBO_ACCESS_TOKEN": tokens["access_token"],
        "QBO_REFRESH_TOKEN": tokens["refresh_token"],
        "QBO_ACCESS_TOKEN_EXPIRES_AT": str(tokens["access_expires_at"]),
        "QBO_STATE_DIR": state,
        "QBO_PROXY_PORT": str(proxy_port),
        "QBO_OPS_PORT": str(ops_port),
        "QBO_OPS_HOST": "127.0.0.1",
        "QBO_LOG_LEVEL": "warning",
        "QBO_MONITOR_AUTOSTART": "false",
        # The benchmark measures the gateway's own cost, not QBO's limits.
        "QBO_RATE_LIMIT_PER_MINUTE": "100000000",
        "QBO_RATE_LIMIT_PER_SECOND": "1000000",
        "QBO_CONCURRENCY_LIMIT": "10000",
    }
    redis: RedisServer | None = None
    counter: RespCounter | None = None
    if mode == "redis":
        redis = RedisServer()
        redis.start()
        env["QBO_REDIS_URL"] = redis.url
        if count_redis:
            # The counting relay costs time itself: counted runs report commands, not speed.
            counter = RespCounter(redis.port)
            await counter.start()
            env["QBO_REDIS_URL"] = f"redis://127.0.0.1:{counter.port}/0"
        env["QBO_TOKEN_KEYS"] = Fernet.generate_key().decode()
    proc = start_gateway(env)
    try:
        await wait_ready(f"http://127.0.0.1:{ops_port}/readyz")
        url = f"http://127.0.0.1:{proxy_port}/v3/company/{REALM}/companyinfo/{REALM}"
        await load(url, {}, 0.5, concurrency)  # warm up
        await asyncio.sleep(0.3)
        if counter is not None:
            counter.reset()
        result = await load(url, {}, seconds, concurrency)
        if counter is not None:
            await asyncio.sleep(0.3)  # outcome records are written after the response
            counts = dict(counter.by_command)
            n = max(1, int(result["requests"]))
            result["redis_cmds_per_request"] = sum(counts.values()) / n
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
            print("redis commands per request:", ", ".join(f"{k} {v / n:.2f}" for k, v in top))
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if redis is not None:
            redis.cleanup()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mode", choices=["embedded", "redis", "both"], default="both")
    args = parser.parse_args()
    sim_port = free_port()
    sim, tokens = start_simulator(sim_port)
    sim_url = f"http://127.0.0.1:{sim_port}"
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        direct_url = f"{sim_url}/v3/company/{REALM}/companyinfo/{REALM}"
        auth = {"Authorization": f"Bearer {tokens['access_token']}", "Accept": "application/json"}
        await load(direct_url, auth, 0.5, args.concurrency)
        rows.append(
            ("direct to simulator", await load(direct_url, auth, args.duration, args.concurrency))
        )
        modes = ["embedded", "redis"] if args.mode == "both" else [args.mode]
        for mode in modes:
            result = await run_gateway(mode, sim_url, tokens, args.duration, args.concurrency)
            if mode == "redis":
                counted = await run_gateway(
                    mode, sim_url, tokens, 2.0, args.concurrency, count_redis=True
                )
                result["redis_cmds_per_request"] = counted["redis_cmds_per_request"]
            rows.append((f"gateway ({mode})", result))
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    print(
        f"\nconcurrency {args.concurrency}, {args.duration:.0f} s per path, {os.cpu_count()} cores"
    )
    print(f"{'path':<24}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'redis cmds/req':>16}")
    for name, r in rows:
        per = r.get("redis_cmds_per_request")
        print(
            f"{name:<24}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8.0f}"
            f"{(f'{per:.2f}' if per is not None else '-'):>16}"
        )


if __name__ == "__main__":
    asyncio.run(main())
