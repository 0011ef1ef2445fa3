"""Soak: bounded mixed traffic with faults at random, then a look for leaks.

Starts a private redis-server, the QBO simulator and the gateway (Redis mode) as separate
processes, drives mixed traffic at a bounded rate for `--duration` seconds (reads, queries,
writes, large reports, slow-reading callers, slow-header connections) while injecting
faults at random through the simulator's control routes (5xx, timeouts, broken and slow
bodies, dropped connections, throttles) and restarting Redis. It reports the gateway's
RSS, open file descriptors and asyncio tasks after a warm-up and again after the traffic
has stopped, and the requests answered, failed, cut and lost; it exits 1 on growth.

    .venv/bin/python bench/soak.py                 # 20 minutes
    .venv/bin/python bench/soak.py --duration 60   # what CI runs

answered: a complete answer; failed: of those, a 5xx or 429; cut: headers arrived and the
body was aborted (how the gateway tells a caller QBO broke off); lost: no answer at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer  # noqa: E402

REALM = "9130349226472226"
EXE = [sys.executable, "-m", "qbo_gateway"]

FAULTS = [
    {"kind": "server_error", "times": 3},
    {"kind": "gateway_timeout", "times": 2},
    {"kind": "delay", "delay": 4.0, "times": 2},
    {"kind": "broken_body", "times": 2},
    {"kind": "slow_body", "delay": 0.8, "times": 2},
    {"kind": "disconnect", "times": 2},
    {"kind": "throttle", "times": 2, "retry_after": "1"},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def start_gateway(env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("QBO_")}
    full.update(env)
    return subprocess.Popen(
        [*EXE, "serve"], env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


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


@dataclass
class Tally:
    answered: int = 0
    failed: int = 0
    cut: int = 0
    lost: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    faults_injected: int = 0
    redis_restarts: int = 0
    slow_header_connections: int = 0


@dataclass(frozen=True)
class Sample:
    rss_kib: int
    fds: int
    tasks: int


def sample(pid: int, tasks: int) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return Sample(rss, len(os.listdir(f"/proc/{pid}/fd")), tasks)


async def loop_tasks(session: aiohttp.ClientSession, ops: str) -> int:
    async with session.get(f"{ops}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith("qbo_gateway_asyncio_tasks "):
                return int(float(line.split()[1]))
    raise RuntimeError("the gateway exports no qbo_gateway_asyncio_tasks")


def pick_request(proxy: str) -> tuple[str, str, bytes | None]:
    base = f"{proxy}/v3/company/{REALM}"
    roll = random.random()
    if roll < 0.6:
        return "GET", f"{base}/companyinfo/{REALM}", None
    if roll < 0.8:
        return "GET", f"{base}/query?query=select%20*%20from%20Customer", None
    if roll < 0.92:
        return "POST", f"{base}/customer", b'{"DisplayName":"soak"}'
    return "GET", f"{base}/reports/ProfitAndLoss?sim_size=400000", None


async def one_request(session: aiohttp.ClientSession, proxy: str, tally: Tally) -> None:
    method, url, body = pick_request(proxy)
    slow_reader = random.random() < 0.1
    try:
        async with session.request(method, url, data=body) as resp:
            try:
                if slow_reader:  # a caller that reads its answer slowly
                    async for _chunk in resp.content.iter_chunked(16 * 1024):
                        await asyncio.sleep(0.02)
                else:
                    await resp.read()
            except aiohttp.ClientPayloadError:
                tally.cut += 1
                return
            tally.answered += 1
            key = str(resp.status)
            tally.statuses[key] = tally.statuses.get(key, 0) + 1
            if resp.status >= 500 or resp.status == 429:
                tally.failed += 1
    except (aiohttp.ClientError, TimeoutError):
        tally.lost += 1


async def traffic(proxy: str, rate: float, stop: asyncio.Event, tally: Tally) -> None:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        pending: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            if len(pending) < 64:  # bounded: never more than 64 requests in flight
                task = asyncio.create_task(one_request(session, proxy, tally))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(random.expovariate(rate))
        await asyncio.gather(*pending)


async def slow_headers(host: str, port: int, stop: asyncio.Event, tally: Tally) -> None:
    """Now and then a connection that sends its headers a byte at a time."""
    while not stop.is_set():
        await asyncio.sleep(random.uniform(2, 6))
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            continue
        tally.slow_header_connections += 1
        try:
            for byte in b"GET /v3/company/1/x HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.1)
                if reader.at_eof() or stop.is_set():
                    break
        except ConnectionError:
            pass
        writer.close()


async def chaos(sim: str, redis: RedisServer, stop: asyncio.Event, tally: Tally) -> None:
    async with aiohttp.ClientSession() as session:
        next_restart = time.monotonic() + random.uniform(15, 40)
        while not stop.is_set():
            await asyncio.sleep(random.uniform(1.0, 4.0))
            rule = dict(random.choice(FAULTS))
            async with session.post(f"{sim}/_sim/faults", json=rule) as resp:
                resp.raise_for_status()
            tally.faults_injected += 1
            if time.monotonic() >= next_restart:
                await asyncio.to_thread(redis.stop)
                await asyncio.sleep(random.uniform(1.0, 4.0))
                await asyncio.to_thread(redis.start)
                tally.redis_restarts += 1
                next_restart = time.monotonic() + random.uniform(30, 90)
        async with session.delete(f"{sim}/_sim/faults") as resp:
            resp.raise_for_status()


def gateway_env(sim: str, tokens: dict[str, str], redis: RedisServer) -> dict[str, str]:
    return {
        "QBO_CLIENT_ID": "sim-client",
        "QBO_CLIENT_SECRET": "sim-secret",
        "QBO_API_BASE_URL": sim,
        "QBO_TOKEN_URL": f"{sim}/oauth2/v1/tokens/bearer",
        "QBO_REALM_ID": REALM,
        "QBO_ACCESS_TOKEN": tokens["access_token"],
        "QBO_REFRESH_TOKEN": tokens["refresh_token"],
        "QBO_ACCESS_TOKEN_EXPIRES_AT": str(tokens["access_expires_at"]),
        "QBO_STATE_DIR": tempfile.mkdtemp(prefix="qbogw-soak-"),
        "QBO_REDIS_URL": redis.url,
        "QBO_TOKEN_KEYS": Fernet.generate_key().decode(),
        "QBO_OPS_HOST": "127.0.0.1",
        "QBO_LOG_LEVEL": "error",
        "QBO_REQUEST_TIMEOUT_SECONDS": "3",
        "QBO_ADMISSION_WAIT_SECONDS": "1",
        "QBO_BREAKER_RECOVERY_SECONDS": "5",
        "QBO_BREAKER_MAX_RECOVERY_SECONDS": "10",
        "QBO_THROTTLE_COOLDOWN_SECONDS": "2",
        "QBO_CACHE_FRESH_SECONDS": "2",
        "QBO_RATE_LIMIT_PER_MINUTE": "100000",
        "QBO_RATE_LIMIT_PER_SECOND": "1000",
        "QBO_CONCURRENCY_LIMIT": "32",
    }


async def soak(duration: float, rate: float, warmup: float) -> dict[str, object]:
    # Persistent, as a production Redis holding tokens is: a restart keeps the realm.
    redis = RedisServer(persistent=True)
    redis.start()
    sim_port, proxy_port, ops_port = free_port(), free_port(), free_port()
    sim_proc, tokens = start_simulator(sim_port)
    sim = f"http://127.0.0.1:{sim_port}"
    env = gateway_env(sim, tokens, redis)
    env.update({"QBO_PROXY_PORT": str(proxy_port), "QBO_OPS_PORT": str(ops_port)})
    gw = start_gateway(env)
    proxy, ops = f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{ops_port}"
    tally = Tally()
    try:
        await wait_ready(f"{ops}/readyz")
        stop = asyncio.Event()
        load = [
            asyncio.create_task(traffic(proxy, rate, stop, tally)),
            asyncio.create_task(slow_headers("127.0.0.1", proxy_port, stop, tally)),
        ]
        await asyncio.sleep(min(warmup, duration / 4))
        async with aiohttp.ClientSession() as session:
            start = sample(gw.pid, await loop_tasks(session, ops))
            chaos_task = asyncio.create_task(chaos(sim, redis, stop, tally))
            await asyncio.sleep(duration)
            stop.set()
            await asyncio.gather(*load, chaos_task)
            if redis.proc is None:
                redis.start()
            await asyncio.sleep(8)  # let deadlines, cool-downs and idle connections pass
            end = sample(gw.pid, await loop_tasks(session, ops))
    finally:
        gw.terminate()
        gw.wait(timeout=30)
        sim_proc.terminate()
        sim_proc.wait(timeout=10)
        redis.cleanup()
    return {"duration_s": duration, "start": asdict(start), "end": asdict(end), **asdict(tally)}


def growth_problems(report: dict[str, object]) -> list[str]:
    start, end = report["start"], report["end"]
    assert isinstance(start, dict) and isinstance(end, dict)
    problems = []
    if end["rss_kib"] > start["rss_kib"] * 1.25 + 8 * 1024:
        problems.append(f"RSS grew from {start['rss_kib']} KiB to {end['rss_kib']} KiB")
    if end["fds"] > start["fds"] + 16:
        problems.append(f"open fds grew from {start['fds']} to {end['fds']}")
    if end["tasks"] > start["tasks"] + 16:
        problems.append(f"asyncio tasks grew from {start['tasks']} to {end['tasks']}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1200.0, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument(
        "--warmup", type=float, default=15.0, help="seconds before the start sample"
    )
    args = parser.parse_args()
    report = asyncio.run(soak(args.duration, args.rate, args.warmup))
    problems = growth_problems(report)
    report["problems"] = problems
    print(json.dumps(report, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
