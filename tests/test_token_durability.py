"""Tokens are never lost: whole gateways on Redis, and Redis failing under them.

Each test drives a real gateway (the composition root, real sockets) against the simulator
(strict rotation: a refreshed-away token answers `invalid_grant`) and a private
redis-server that the test stops (SIGSTOP), kills, restarts empty or from an older RDB
snapshot. What must hold: the realm keeps working on its newest pair, Intuit never sees a
dead refresh token, and a store that went back in time is reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_sync
from aiohttp.test_utils import TestServer

from qbo_gateway.app import Gateway
from qbo_gateway.clock import ManualClock
from qbo_gateway.simulator import Simulator
from qbo_gateway.tokens.crypto import TokenCipher, generate_key
from qbo_gateway.tokens.spill import SPILL_FILE_NAME, SpillFile
from tests.harness import REALM, start_gateway, start_sim
from tests.redis_server import RedisServer
from tests.tcp_relay import TcpRelay

KEY = generate_key()
COMPANY = f"companyinfo/{REALM}"
ADMIN = {"Authorization": "Bearer admin-token-for-tests"}


async def until(condition: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    """Wait for another process or task to make `condition` true (not for time to pass)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Rig:
    clock: ManualClock
    sim: Simulator
    sim_server: TestServer
    redis: RedisServer
    state_dir: Path
    prefix: str
    aiohttp_server: Any
    session: aiohttp.ClientSession
    redis_url: str | None = None  # default: the server's own (a relay may stand between)
    gw: Gateway | None = None
    proxy: TestServer | None = None
    ops: TestServer | None = None

    async def start(self, *, seed: bool) -> Gateway:
        pair = self.sim.add_realm(REALM) if seed else None
        self.gw, self.proxy, self.ops, _ = await start_gateway(
            self.aiohttp_server,
            self.sim,
            self.sim_server,
            self.state_dir,
            clock=self.clock,
            seed=pair,
            redis_url=self.redis_url or self.redis.url,
            redis_prefix=self.prefix,
            token_keys=KEY,
        )
        return self.gw

    async def get(self) -> int:
        assert self.proxy is not None
        url = str(self.proxy.make_url(f"/v3/company/{REALM}/{COMPANY}"))
        async with self.session.get(url) as resp:
            await resp.read()
            return resp.status

    async def alerts(self) -> list[dict[str, Any]]:
        assert self.ops is not None
        async with self.session.get(str(self.ops.make_url("/health/alerts"))) as resp:
            body = await resp.json()
        return list(body["alerts"] if isinstance(body, dict) else body)

    def spilled(self) -> SpillFile:
        return SpillFile(self.state_dir / SPILL_FILE_NAME, TokenCipher(KEY))

    def live_refresh_token(self) -> str | None:
        return self.sim.realms[REALM].refresh_token

    async def refresh_while_redis_stops(self) -> None:
        """A refresh whose token call is answered just after Redis stopped answering."""
        self.clock.advance(3600 - 600)  # inside the refresh margin
        self.clock.advance(6)  # past the in-memory recheck: the next request reads Redis
        calls = self.sim.token_calls
        self.sim.token_hold = asyncio.Event()
        request = asyncio.create_task(self.get())
        await until(lambda: self.sim.token_calls == calls + 1, "the token call")
        self.redis.pause()
        self.sim.token_hold.set()
        assert await asyncio.wait_for(request, 30) == 200
        self.sim.token_hold = None


@pytest.fixture
async def rig(aiohttp_server: Any, tmp_path: Path, redis_prefix: str) -> AsyncIterator[Rig]:
    clock = ManualClock()
    sim, sim_server = await start_sim(aiohttp_server, clock=clock.now)
    server = RedisServer()
    server.start()
    session = aiohttp.ClientSession()
    r = Rig(
        clock, sim, sim_server, server, tmp_path / "state", redis_prefix, aiohttp_server, session
    )
    try:
        yield r
    finally:
        if r.sim.token_hold is not None:
            r.sim.token_hold.set()
        if server.proc is not None:
            server.resume()
        if r.gw is not None:
            await r.gw.close()
        await session.close()
        server.cleanup()


def redis_client(server: RedisServer) -> redis_sync.Redis:
    return redis_sync.Redis(host="127.0.0.1", port=server.port)


async def test_refresh_during_sigstop_then_redis_restarted_empty(rig: Rig) -> None:
    gw = await rig.start(seed=True)
    assert await rig.get() == 200
    await rig.refresh_while_redis_stops()
    spilled = rig.spilled().get(REALM)
    assert spilled is not None and spilled.refresh_token == rig.live_refresh_token()
    rig.redis.stop()  # SIGKILL: everything Redis held is gone
    rig.redis.start()
    await until(lambda: not (rig.state_dir / SPILL_FILE_NAME).exists(), "reconciliation")
    stored = await gw.store.get(REALM)
    assert stored is not None and stored.refresh_token == rig.live_refresh_token()
    assert stored.version == spilled.version == 2
    assert await rig.get() == 200
    rig.clock.advance(3600 - 600 + 6)  # the next refresh uses the written-back token
    assert await rig.get() == 200
    assert rig.sim.token_calls == 2
    assert rig.sim.invalid_grants == 0
    kinds = {(a["kind"], a["severity"], a["state"]) for a in await rig.alerts()}
    assert ("token_store_rollback", "critical", "resolved") in kinds  # cleared by the refresh


@pytest.mark.parametrize("pending", [True, False], ids=["pair-pending", "no-pending-pair"])
async def test_redis_restarted_from_an_older_snapshot(rig: Rig, pending: bool) -> None:
    gw = await rig.start(seed=True)
    assert await rig.get() == 200
    redis_client(rig.redis).save()  # the old snapshot: version 1
    rig.clock.advance(3600 - 600 + 6)
    assert await rig.get() == 200  # refreshed and stored: version 2
    assert rig.sim.token_calls == 1
    if pending:
        await rig.refresh_while_redis_stops()  # version 3 is only in the spill file
    rig.redis.stop()
    assert (rig.redis.dir / "dump.rdb").exists()
    rig.redis.start()  # loads the old snapshot
    old = redis_client(rig.redis).hget(f"{rig.prefix}:{{qbo:{REALM}}}:token", "v")
    assert old == b"1"
    rig.clock.advance(6)  # past the in-memory recheck: the next request reads the store
    await until(lambda: gw.availability.up, "the store to answer")
    assert await rig.get() == 200
    newest = 3 if pending else 2
    stored = await gw.store.get(REALM)
    assert stored is not None and stored.version == newest
    assert stored.refresh_token == rig.live_refresh_token()
    assert not (rig.state_dir / SPILL_FILE_NAME).exists()
    active = [a for a in await rig.alerts() if a["state"] == "active"]
    assert [(a["kind"], a["severity"]) for a in active] == [("token_store_rollback", "critical")]
    rig.clock.advance(3600 - 600 + 6)
    assert await rig.get() == 200
    assert rig.sim.token_calls == newest
    assert rig.sim.invalid_grants == 0


async def test_a_spilled_pair_survives_a_restart_of_the_gateway(rig: Rig) -> None:
    gw = await rig.start(seed=True)
    assert await rig.get() == 200
    await rig.refresh_while_redis_stops()
    live = rig.live_refresh_token()
    await gw.close()  # Redis still stopped: the pair stays in the spill file
    rig.gw = None
    assert rig.spilled().get(REALM) is not None
    rig.redis.stop()
    rig.redis.start()  # empty
    gw = await rig.start(seed=False)  # a new process reads the spill file on start
    stored = await gw.store.get(REALM)
    assert stored is not None and stored.refresh_token == live
    assert await rig.get() == 200
    assert rig.sim.invalid_grants == 0


async def test_the_refresh_lock_lapses_within_one_token_call_of_its_holder(rig: Rig) -> None:
    gw = await rig.start(seed=True)
    rig.clock.advance(3600 - 600 + 6)
    rig.sim.token_hold = asyncio.Event()
    request = asyncio.create_task(rig.get())
    await until(lambda: rig.sim.token_calls == 1, "the token call")
    lock = f"{rig.prefix}:{{qbo:{REALM}}}:lock:token"
    ttl = redis_client(rig.redis).pttl(lock)
    timeout = gw.settings.token_timeout_seconds
    # A holder killed now frees the realm after one token call and a little, not minutes.
    assert timeout * 1000 < ttl <= (timeout + 5) * 1000
    rig.sim.token_hold.set()
    assert await request == 200
    assert redis_client(rig.redis).exists(lock) == 0  # released by its holder


def replica_of(port: int) -> RedisServer:
    replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(port)])
    replica.start()
    return replica


def stored_version(server: RedisServer, prefix: str) -> int | None:
    raw = redis_client(server).hget(f"{prefix}:{{qbo:{REALM}}}:token", "v")
    return None if raw is None else int(raw)


@pytest.mark.parametrize("replica_stalls", [False, True], ids=["replica-acks", "replica-stalled"])
async def test_master_killed_after_a_refresh_the_promoted_replica_has_the_newest_pair(
    rig: Rig, replica_stalls: bool
) -> None:
    link = TcpRelay(rig.redis.port)  # the replication link, which the test can cut
    await link.start()
    replica = replica_of(link.port)
    relay = TcpRelay(rig.redis.port)
    await relay.start()
    rig.redis_url = relay.url
    try:
        await until(
            lambda: redis_client(replica).info("replication").get("master_link_status") == "up",
            "replication",
        )
        gw = await rig.start(seed=True)
        assert await rig.get() == 200
        durable, why = await gw.store.durability()
        assert durable and "WAIT" in why
        if replica_stalls:
            link.freeze()  # the replica cannot receive (nor acknowledge) the refreshed pair
        rig.clock.advance(3600 - 600 + 6)
        assert await rig.get() == 200  # refreshed: version 2 written to the master
        live = rig.live_refresh_token()
        spilled = rig.spilled().get(REALM)
        if replica_stalls:
            # No replica acknowledged it: the pair stays in the spill file.
            assert spilled is not None and spilled.refresh_token == live
            rig.redis.stop()  # the master dies before the replica caught up
            link.thaw()  # what the link held is lost with the master
        else:
            assert spilled is None  # a replica acknowledged it before the refresh returned
            rig.redis.stop()  # the master dies right after the refresh
        redis_client(replica).execute_command("REPLICAOF", "NO", "ONE")  # promoted
        assert stored_version(replica, rig.prefix) == (1 if replica_stalls else 2)
        relay.retarget(replica.port)  # the failover, as the gateway sees it
        rig.clock.advance(6)  # past the in-memory recheck: the next request reads the store
        await until(lambda: gw.availability.up, "the new master")
        assert await rig.get() == 200
        assert stored_version(replica, rig.prefix) == 2
        stored = await gw.store.get(REALM)
        assert stored is not None and stored.refresh_token == live
        rig.clock.advance(3600 - 600 + 6)
        assert await rig.get() == 200  # the next refresh spends the newest refresh token
        assert (rig.sim.token_calls, rig.sim.invalid_grants) == (2, 0)
    finally:
        await relay.close()
        await link.close()
        replica.cleanup()
