"""The command line as operators use it: real processes, real signals, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.fernet import Fernet

from qbo_gateway.simulator import FaultRule
from tests.harness import CLIENT_ID, CLIENT_SECRET, REALM, start_sim
from tests.redis_server import free_port

pytestmark = pytest.mark.slow
EXE = [sys.executable, "-m", "qbo_gateway"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> Any:
    full = {k: v for k, v in os.environ.items() if not k.startswith("QBO_")}
    full.update(env or {})
    return subprocess.run(
        [*EXE, *args], env=full, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_keygen_prints_one_fernet_key() -> None:
    result = run_cli("keygen")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    Fernet(lines[0].encode())  # raises when it is not a key


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"QBO_REALM_ID": "12ab"}, "QBO_REALM_ID"),
        ({"QBO_API_BASE_URL": "not a url"}, "QBO_API_BASE_URL"),
        ({"QBO_PROXY_HOST": "0.0.0.0"}, "QBO_CALLERS_FILE"),
        ({"QBO_REDIS_URL": "redis://127.0.0.1:1/0"}, "QBO_TOKEN_KEYS"),
        ({"QBO_RATE_LIMIT_PER_MINUTE": "many"}, "QBO_RATE_LIMIT_PER_MINUTE"),
    ],
)
def test_check_config_names_the_bad_setting(
    tmp_path: Path, env: dict[str, str], names: str
) -> None:
    result = run_cli("check-config", env={"QBO_STATE_DIR": str(tmp_path), **env})
    assert result.returncode != 0
    assert names in result.stderr


def test_check_config_reports_bad_callers_file(tmp_path: Path) -> None:
    callers = tmp_path / "callers.yaml"
    callers.write_text("callers:\n  - name: a\n    key_sha256: nothex\n    realms: ['1']\n")
    env = {"QBO_STATE_DIR": str(tmp_path), "QBO_CALLERS_FILE": str(callers)}
    result = run_cli("check-config", env=env)
    assert result.returncode == 1
    assert "key_sha256" in result.stderr


def test_check_config_passes_on_good_settings(tmp_path: Path) -> None:
    env = {
        "QBO_STATE_DIR": str(tmp_path / "state"),
        "QBO_TOKEN_KEYS": Fernet.generate_key().decode(),
    }
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "state").exists()  # no side effects


def test_serve_refuses_bad_settings(tmp_path: Path) -> None:
    result = run_cli("serve", env={"QBO_STATE_DIR": str(tmp_path), "QBO_REALM_ID": "x1"})
    assert result.returncode == 2
    assert "QBO_REALM_ID" in result.stderr


def test_check_fails_when_nothing_listens() -> None:
    result = run_cli("check", "--port", str(free_port()))
    assert result.returncode == 1


async def wait_ready(
    session: aiohttp.ClientSession, url: str, proc: Any, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("gateway never became ready")


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    yield free_port(), free_port()


async def start_serve(env: dict[str, str]) -> asyncio.subprocess.Process:
    full = {k: v for k, v in os.environ.items() if not k.startswith("QBO_")}
    full.update(env)
    return await asyncio.create_subprocess_exec(
        *EXE, "serve", env=full, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_sigterm_drains_in_flight_request(
    aiohttp_server: Any, tmp_path: Path, ports: tuple[int, int], client: aiohttp.ClientSession
) -> None:
    sim, sim_server = await start_sim(aiohttp_server)
    pair = sim.add_realm(REALM)
    base = str(sim_server.make_url("")).rstrip("/")
    proxy_port, ops_port = ports
    env = {
        "QBO_CLIENT_ID": CLIENT_ID,
        "QBO_CLIENT_SECRET": CLIENT_SECRET,
        "QBO_API_BASE_URL": base,
        "QBO_TOKEN_URL": f"{base}/oauth2/v1/tokens/bearer",
        "QBO_REALM_ID": REALM,
        "QBO_ACCESS_TOKEN": pair.access_token,
        "QBO_REFRESH_TOKEN": pair.refresh_token,
        "QBO_ACCESS_TOKEN_EXPIRES_AT": str(pair.access_expires_at),
        "QBO_STATE_DIR": str(tmp_path),
        "QBO_PROXY_PORT": str(proxy_port),
        "QBO_OPS_PORT": str(ops_port),
        "QBO_OPS_HOST": "127.0.0.1",
        "QBO_MONITOR_AUTOSTART": "false",
    }
    proc = await start_serve(env)
    ops = f"http://127.0.0.1:{ops_port}"
    try:
        await wait_ready(client, f"{ops}/readyz", proc)
        check = await asyncio.to_thread(run_cli, "check", "--port", str(ops_port))
        assert check.returncode == 0
        sim.inject(FaultRule(kind="delay", delay=1.5, path="companyinfo", times=1))
        slow = asyncio.create_task(
            client.get(f"http://127.0.0.1:{proxy_port}/v3/company/{REALM}/companyinfo/{REALM}")
        )
        for _ in range(200):
            if sim.in_flight:
                break
            await asyncio.sleep(0.01)
        assert sim.in_flight == 1
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with client.get(f"{ops}/readyz") as resp:
            assert resp.status == 503
        resp = await slow
        assert resp.status == 200
        assert (await resp.json())["CompanyInfo"]
        resp.release()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert pair.access_token not in stderr and pair.refresh_token not in stderr
    assert "draining" in stderr


async def test_restart_on_same_state_ignores_stale_environment_token(
    aiohttp_server: Any, tmp_path: Path, ports: tuple[int, int], client: aiohttp.ClientSession
) -> None:
    sim, sim_server = await start_sim(aiohttp_server)
    first = sim.add_realm(REALM)
    base = str(sim_server.make_url("")).rstrip("/")
    proxy_port, ops_port = ports
    env = {
        "QBO_CLIENT_ID": CLIENT_ID,
        "QBO_CLIENT_SECRET": CLIENT_SECRET,
        "QBO_API_BASE_URL": base,
        "QBO_TOKEN_URL": f"{base}/oauth2/v1/tokens/bearer",
        "QBO_REALM_ID": REALM,
        "QBO_REFRESH_TOKEN": first.refresh_token,  # no access token: refreshed at first use
        "QBO_STATE_DIR": str(tmp_path),
        "QBO_PROXY_PORT": str(proxy_port),
        "QBO_OPS_PORT": str(ops_port),
        "QBO_OPS_HOST": "127.0.0.1",
    }
    url = f"http://127.0.0.1:{proxy_port}/v3/company/{REALM}/companyinfo/{REALM}"
    for round_ in range(2):
        proc = await start_serve(env)
        try:
            await wait_ready(client, f"http://127.0.0.1:{ops_port}/readyz", proc)
            async with client.get(url) as resp:
                assert resp.status == 200, (round_, await resp.text())
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    # The first run rotated the refresh token; the second run used the stored one, not the
    # (now dead) one still in its environment.
    assert sim.token_calls >= 1
    dead = [r for r in sim.token_requests if first.refresh_token in r.body.decode()]
    assert len(dead) == 1


async def test_demo_prints_curl_lines_that_work(tmp_path: Path, ports: tuple[int, int]) -> None:
    proxy_port, ops_port = ports
    env = {k: v for k, v in os.environ.items() if not k.startswith("QBO_")}
    env.update(
        {
            "QBO_PROXY_PORT": str(proxy_port),
            "QBO_OPS_PORT": str(ops_port),
            "QBO_STATE_DIR": str(tmp_path),
        }
    )
    proc = await asyncio.create_subprocess_exec(
        *EXE, "demo", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "demo exited before printing curl lines"
                if line.strip().startswith("curl"):
                    lines.append(line.strip())
                elif lines and not line.strip():
                    break
        first = await asyncio.to_thread(
            subprocess.run, ["bash", "-c", lines[0]], capture_output=True, text=True, timeout=10
        )
        assert json.loads(first.stdout)["CompanyInfo"]["Id"]
        query = await asyncio.to_thread(
            subprocess.run, ["bash", "-c", lines[1]], capture_output=True, text=True, timeout=10
        )
        assert len(json.loads(query.stdout)["QueryResponse"]["Customer"]) == 3
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_settings_come_from_files_in_the_secrets_dir(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "qbo_realm_id").write_text("not-digits")
    env = {"QBO_STATE_DIR": str(tmp_path), "QBO_SECRETS_DIR": str(secrets)}
    result = run_cli("check-config", env=env)
    assert result.returncode == 2
    assert "QBO_REALM_ID" in result.stderr
    (secrets / "qbo_realm_id").write_text("9130349226472226")
    (secrets / "qbo_refresh_token").write_text("from-a-mounted-secret-file")
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert "from-a-mounted-secret-file" not in result.stdout + result.stderr
