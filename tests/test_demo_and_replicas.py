"""The demo and the local road to Redis mode, as a newcomer runs them: real processes.

The demo says where its state lives and its admin token, and its fault step ends with lines
that explain the open circuit and close it; with QBO_REDIS_URL it runs on that Redis. The
simulator prints (and writes) the settings a `serve` needs, and two `serve` replicas on one
private Redis share the simulator's realm with one token call between them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.fernet import Fernet

from qbo_gateway.state.redis_client import make_redis
from tests.redis_server import RedisServer, free_port
from tests.test_cli import wait_ready

pytestmark = pytest.mark.slow
EXE = [sys.executable, "-m", "qbo_gateway"]
REALM = "9130349226472226"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QBO_")}
    env.update(extra)
    return env


class Proc:
    """A `qbo-gateway` subprocess whose stdout is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, *args: str, env: dict[str, str]) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *EXE, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def read_until(self, done: str, timeout: float = 20) -> list[str]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                assert raw, f"exited before printing {done!r}: {self.lines}"
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if done in line:
                    return self.lines

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        await p.stop()


async def sh(line: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", line], capture_output=True, text=True, timeout=20
    )
    return done.stdout


def printed(lines: list[str], prefix: str) -> str:
    found = [line.strip() for line in lines if line.strip().startswith(prefix)]
    assert found, f"nothing starting with {prefix!r} in {lines}"
    return found[0]


async def test_demo_says_where_state_lives_and_how_the_circuit_recovers(
    tmp_path: Path, procs: list[Proc]
) -> None:
    proxy, ops = free_port(), free_port()
    env = clean_env(
        QBO_PROXY_PORT=str(proxy), QBO_OPS_PORT=str(ops), QBO_STATE_DIR=str(tmp_path / "st")
    )
    demo = await Proc.start("demo", env=env)
    procs.append(demo)
    lines = await demo.read_until("/health/business/")
    assert f"state: embedded, in {tmp_path / 'st'}" in printed(lines, "state:")
    admin = printed(lines, "admin token:").split()[2]
    # Every printed command, in order, as a newcomer pastes them.
    commands = [line.strip() for line in lines if line.strip().startswith(("curl", "for "))]
    outputs = {command: await sh(command) for command in commands}
    loop = printed(lines, "for i in")
    assert outputs[loop].split()[-1] == "503", outputs[loop]  # the circuit opened
    refused = printed(lines, "curl -si -X POST")
    assert "X-QBO-Gateway-Error: GW-CIRCUIT-OPEN" in outputs[refused]
    assert "QBO_BREAKER_RECOVERY_SECONDS=300" in "\n".join(lines)
    reset = printed(lines, f"curl -s -X POST http://127.0.0.1:{ops}/admin/realms/")
    assert admin in reset
    assert json.loads(outputs[reset]) == {"realm_id": REALM, "breaker": "closed"}
    health = json.loads(outputs[printed(lines, f"curl -s http://127.0.0.1:{ops}/health/b")])
    assert health["breaker"]["state"] == "closed"
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{proxy}/v3/company/{REALM}/customer"
        async with session.post(url, json={"DisplayName": "after the reset"}) as resp:
            assert resp.status == 200


async def test_demo_uses_redis_when_told(
    tmp_path: Path, procs: list[Proc], redis_server: RedisServer, redis_prefix: str
) -> None:
    ports = {"QBO_PROXY_PORT": str(free_port()), "QBO_OPS_PORT": str(free_port())}
    without_keys = clean_env(QBO_REDIS_URL=redis_server.url, **ports)
    refused = await asyncio.to_thread(
        subprocess.run, [*EXE, "demo"], env=without_keys, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "QBO_TOKEN_KEYS" in refused.stdout + refused.stderr
    env = clean_env(
        QBO_REDIS_URL=redis_server.url,
        QBO_REDIS_PREFIX=redis_prefix,
        QBO_TOKEN_KEYS=Fernet.generate_key().decode(),
        QBO_STATE_DIR=str(tmp_path),
        **ports,
    )
    demo = await Proc.start("demo", env=env)
    procs.append(demo)
    lines = await demo.read_until("/health/business/")
    assert printed(lines, "state:") == (
        f"state: Redis at {redis_server.url} (standalone, keys prefixed {redis_prefix})"
    )
    client = make_redis(redis_server.url)
    try:
        assert [key async for key in client.scan_iter(f"{redis_prefix}*")]
    finally:
        await client.aclose()


async def test_two_replicas_share_the_simulator_through_redis(
    tmp_path: Path, procs: list[Proc], redis_server: RedisServer, redis_prefix: str
) -> None:
    sim_port = free_port()
    env_file = tmp_path / "simulator.env"
    sim = await Proc.start(
        "simulator", "--port", str(sim_port), "--env-file", str(env_file), env=clean_env()
    )
    procs.append(sim)
    lines = await sim.read_until("written to")
    assert f"export QBO_API_BASE_URL=http://127.0.0.1:{sim_port}" in lines
    assert not any("QBO_REFRESH_TOKEN" in line for line in lines)  # only in the 0600 file
    assert env_file.stat().st_mode & 0o777 == 0o600
    settings = dict(
        line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines()
    )
    shared = {
        **settings,
        "QBO_REDIS_URL": redis_server.url,
        "QBO_REDIS_PREFIX": redis_prefix,
        "QBO_TOKEN_KEYS": Fernet.generate_key().decode(),
        "QBO_REPLICA_COUNT": "2",
    }
    replicas = [(free_port(), free_port()) for _ in range(2)]
    async with aiohttp.ClientSession() as session:
        for proxy, ops in replicas:
            env = clean_env(**shared, QBO_PROXY_PORT=str(proxy), QBO_OPS_PORT=str(ops))
            procs.append(await Proc.start("serve", env=env))
            await wait_ready(session, f"http://127.0.0.1:{ops}/readyz", procs[-1].proc)
        for proxy, _ in replicas:
            url = f"http://127.0.0.1:{proxy}/v3/company/{REALM}/companyinfo/{REALM}"
            async with session.get(url) as resp:
                assert resp.status == 200, await resp.text()
        async with session.get(f"http://127.0.0.1:{sim_port}/_sim/stats") as resp:
            stats: dict[str, Any] = await resp.json()
    assert stats["token_calls"] == 1  # one refresh, shared by both replicas
    assert stats["api_requests"] >= 2
