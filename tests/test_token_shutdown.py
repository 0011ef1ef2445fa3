"""SIGTERM and crashes around a refresh, with real `qbo-gateway serve` processes.

The simulator runs in the test (strict rotation; it counts token calls and `invalid_grant`
answers); each gateway is a subprocess on the same state directory, as a pod's next
process would be. Redis, where used, sits behind a TCP relay the test can freeze.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qbo_gateway.simulator import Simulator
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.redis_client import make_redis
from qbo_gateway.tokens.crypto import TokenCipher, generate_key
from qbo_gateway.tokens.spill import SPILL_FILE_NAME, SpillFile
from qbo_gateway.tokens.store_redis import RedisTokenStore
from tests.harness import CLIENT_ID, CLIENT_SECRET, REALM, start_sim
from tests.redis_server import RedisServer, free_port
from tests.tcp_relay import TcpRelay

pytestmark = pytest.mark.slow
KEY = generate_key()
ADMIN_TOKEN = "admin-token-for-shutdown-tests"


async def until(condition: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Wait for another process to make `condition` true (not for time to pass)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Gateway:
    """One `qbo-gateway serve` process; its log goes to a file in the state directory."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.proxy = f"http://127.0.0.1:{env['QBO_PROXY_PORT']}"
        self.ops = f"http://127.0.0.1:{env['QBO_OPS_PORT']}"

    async def start(self, session: aiohttp.ClientSession) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("QBO_")}
        full.update(self.env)
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "qbo_gateway", "serve", env=full, stdout=out, stderr=out
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.returncode is None, self.log.read_text()[-3000:]
            try:
                async with session.get(f"{self.ops}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError("gateway never became ready")

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 30)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def gateway_env(sim_url: str, state_dir: Path, sim: Simulator, **extra: str) -> dict[str, str]:
    pair = sim.add_realm(REALM)
    return {
        "QBO_CLIENT_ID": CLIENT_ID,
        "QBO_CLIENT_SECRET": CLIENT_SECRET,
        "QBO_API_BASE_URL": sim_url,
        "QBO_TOKEN_URL": f"{sim_url}/oauth2/v1/tokens/bearer",
        "QBO_REALM_ID": REALM,
        "QBO_ACCESS_TOKEN": pair.access_token,
        "QBO_REFRESH_TOKEN": pair.refresh_token,
        # Inside the refresh margin: the first request refreshes.
        "QBO_ACCESS_TOKEN_EXPIRES_AT": str(time.time() + 120),
        "QBO_STATE_DIR": str(state_dir),
        "QBO_TOKEN_KEYS": KEY,
        "QBO_PROXY_PORT": str(free_port()),
        "QBO_OPS_PORT": str(free_port()),
        "QBO_OPS_HOST": "127.0.0.1",
        "QBO_ADMIN_TOKEN": ADMIN_TOKEN,
        "QBO_MONITOR_AUTOSTART": "false",
        "QBO_SHUTDOWN_TIMEOUT_SECONDS": "5",
        "QBO_LOG_FORMAT": "console",
        **extra,
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def get_company(session: aiohttp.ClientSession, gw: Gateway) -> int:
    async with session.get(f"{gw.proxy}/v3/company/{REALM}/companyinfo/{REALM}") as resp:
        await resp.read()
        return resp.status


async def force_refresh(session: aiohttp.ClientSession, gw: Gateway) -> int:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with session.post(f"{gw.ops}/admin/realms/{REALM}/refresh", headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_partition_mid_refresh_then_sigterm_keeps_the_pair_in_the_spill_file(
    aiohttp_server: Any, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    sim, sim_server = await start_sim(aiohttp_server)
    redis = RedisServer()
    redis.start()
    relay = TcpRelay(redis.port)
    await relay.start()
    state = tmp_path / "state"
    env = gateway_env(str(sim_server.make_url("")).rstrip("/"), state, sim, QBO_REDIS_URL=relay.url)
    gw = Gateway(env, tmp_path / "gateway.log")
    try:
        sim.token_hold = asyncio.Event()
        await gw.start(session)  # its refresher refreshes at once (inside the margin)
        await until(lambda: sim.token_calls == 1, "the token call")
        relay.freeze()  # Redis stops answering: a blackhole, not a refused connection
        sim.token_hold.set()
        await until(lambda: (state / SPILL_FILE_NAME).exists(), "the spill file")
        assert await gw.stop() == 0
        spilled = SpillFile(state / SPILL_FILE_NAME, TokenCipher(KEY)).get(REALM)
        live = sim.realms[REALM].refresh_token
        assert spilled is not None and spilled.refresh_token == live
        relay.thaw()  # what the dead process had sent into the blackhole is dropped
        client = make_redis(redis.url)
        store = RedisTokenStore(client, RedisKeys("qbogw"), TokenCipher(KEY))
        before = await store.get(REALM)
        assert before is not None and before.version == 1  # the store never got the pair
        await gw.start(session)  # the pod's next process: reconciles the spill file
        after = await store.get(REALM)
        assert after is not None and after.refresh_token == live and after.version == 2
        assert not (state / SPILL_FILE_NAME).exists()
        assert await get_company(session, gw) == 200
        assert await force_refresh(session, gw) == 200  # the written-back token is live
        await client.aclose()
        assert (sim.token_calls, sim.invalid_grants) == (2, 0)
        assert await gw.stop() == 0
    finally:
        sim.token_hold = None
        await gw.kill()
        await relay.close()
        redis.cleanup()


async def business(session: aiohttp.ClientSession, gw: Gateway) -> dict[str, Any]:
    async with session.get(f"{gw.ops}/health/business/{REALM}") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def settled(session: aiohttp.ClientSession, gw: Gateway) -> dict[str, Any]:
    """The realm's picture once the start-up check has told its refresh outcome."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = await business(session, gw)
        if body["status"] != "refresh_outcome_unknown":
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("the refresh outcome stayed unknown")


@pytest.mark.parametrize("rotated", [True, False], ids=["intuit-rotated", "answer-never-sent"])
async def test_kill_9_during_a_slow_token_call(
    aiohttp_server: Any, tmp_path: Path, session: aiohttp.ClientSession, rotated: bool
) -> None:
    sim, sim_server = await start_sim(aiohttp_server)
    state = tmp_path / "state"
    gw = Gateway(
        gateway_env(str(sim_server.make_url("")).rstrip("/"), state, sim), tmp_path / "log"
    )
    first_call = sim.token_hold = asyncio.Event()
    try:
        await gw.start(session)  # its refresher refreshes at once (inside the margin)
        await until(lambda: sim.token_calls == 1, "the slow token call")
        intent = SpillFile(state / SPILL_FILE_NAME, TokenCipher(KEY)).intent(REALM)
        assert intent is not None and intent.version == 1  # noted before the call
        await gw.kill()  # kill -9 while Intuit has not answered
        if rotated:
            # Intuit had acted on the call: it rotated, and the new pair reached no one.
            sim.issue_tokens(REALM)
        check = sim.token_hold = asyncio.Event()  # hold the start-up check's call
        await gw.start(session)
        body = await business(session, gw)
        assert body["status"] == "refresh_outcome_unknown"
        assert body["token"]["refresh_outcome_unknown"] is True
        check.set()
        body = await settled(session, gw)
        assert sim.token_calls == 2  # the lost call and the one check
        if rotated:
            # The rotated pair died with the process: unavoidable, and now shown at once.
            assert body["status"] == "needs_reconnect" and sim.invalid_grants == 1
        else:
            assert body["status"] == "healthy" and sim.invalid_grants == 0
            assert await get_company(session, gw) == 200
        assert SpillFile(state / SPILL_FILE_NAME, TokenCipher(KEY)).intents() == []
        assert await gw.stop() == 0
    finally:
        first_call.set()
        sim.token_hold = None
        await gw.kill()
