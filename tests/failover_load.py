"""A Redis failover under load: three gateways, several realms, a refresh falling due.

Shared by the failover test (which asserts on the outcome) and `bench/failover.py` (which
prints the figures). Three gateways on one Redis topology serve a steady read load for
each realm; the master holding those realms is killed while every realm's refresh falls
due; a replica is promoted. What QBO (the simulator) saw and what callers got is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from cryptography.fernet import Fernet

from qbo_gateway.app import Gateway, build_gateway
from qbo_gateway.clock import SystemClock
from qbo_gateway.edge.server import EdgeRunner
from qbo_gateway.simulator import Simulator
from qbo_gateway.state.keys import RedisKeys
from tests.harness import CLIENT_ID, CLIENT_SECRET, settings_for
from tests.redis_server import RedisServer
from tests.redis_topologies import Target

KEYS = Fernet.generate_key().decode()
MARGIN = 900.0


class Topology(Protocol):
    @property
    def target(self) -> Target: ...

    def master_of(self, key: str) -> RedisServer: ...

    def wait_promoted(self, key: str, dead: RedisServer) -> RedisServer: ...


@dataclass
class Figures:
    requests: int = 0
    failed: int = 0
    failed_first: float | None = None  # seconds after the kill
    failed_last: float | None = None
    refused: int = 0  # 429: a limit said no (not a failure)
    token_calls: int = 0
    invalid_grant: int = 0
    max_per_realm_1s: int = 0
    max_per_realm_60s: int = 0
    promoted_after: float = 0.0  # seconds from the kill until a replica took over
    shared_again_after: float = 0.0  # seconds from the kill until every replica is on Redis
    transitions: list[tuple[float, int, bool]] = field(default_factory=list)


def realms_on_one_master(topology: Topology, prefix: str, count: int) -> list[str]:
    """Realm ids whose keys all live on one master (on a cluster: one shard)."""
    keys = RedisKeys(prefix)
    groups: dict[int, list[str]] = {}
    for n in range(count * 8):
        realm = f"91303492264{n:05d}"
        port = topology.master_of(keys.token(realm)).port
        groups.setdefault(port, []).append(realm)
        if len(groups[port]) == count:
            return groups[port]
    raise RuntimeError("no shard holds enough realms")


async def _serve(app: web.Application, edge: bool) -> tuple[web.AppRunner, str]:
    runner = EdgeRunner(app) if edge else web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def _count_invalid_grant(figures: Figures) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        body = response.body if isinstance(response, web.Response) else None
        if request.path.startswith("/oauth2/") and isinstance(body, bytes):
            figures.invalid_grant += b"invalid_grant" in body
        return response

    return middleware


def _max_in_window(times: list[float], width: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class FailoverRun:
    def __init__(
        self,
        topology: Topology,
        tmp: Path,
        *,
        prefix: str,
        realms: int = 4,
        per_second: int = 6,
        per_minute: int = 300,
        rate_each: float = 6.0,  # requests per second per realm per gateway
    ) -> None:
        self.topology = topology
        self.tmp = tmp
        self.prefix = prefix
        self.realms = realms_on_one_master(topology, prefix, realms)
        self.limits = {"rate_limit_per_second": per_second, "rate_limit_per_minute": per_minute}
        self.interval = 1.0 / rate_each
        self.figures = Figures()
        self.sim = Simulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        self.gateways: list[Gateway] = []
        self.runners: list[web.AppRunner] = []
        self.urls: list[str] = []
        self._kill_at = 0.0
        self._stop = asyncio.Event()

    def _settings(self, sim_url: str, i: int) -> Any:
        t = self.topology.target.topology
        return settings_for(
            sim_url,
            self.tmp / f"state{i}",
            redis_url=t.url,
            redis_mode=t.mode,
            redis_sentinels=",".join(f"{h}:{p}" for h, p in t.sentinels) or None,
            redis_ca_file=t.ca_file,
            token_keys=KEYS,
            replica_count=3,
            admission_wait_seconds=0.5,
            cache_stale_seconds=0,
            refresh_margin_seconds=MARGIN,
            **self.limits,
        )

    async def start(self) -> None:
        app = self.sim.make_app()
        app.middlewares.append(_count_invalid_grant(self.figures))
        runner, sim_url = await _serve(app, edge=False)
        self.runners.append(runner)
        for i in range(3):
            gw = await build_gateway(
                self._settings(sim_url, i), clock=SystemClock(), redis_prefix=self.prefix
            )
            self.gateways.append(gw)
            runner, url = await _serve(gw.proxy_app, edge=True)
            self.runners.append(runner)
            self.urls.append(url)

    async def seed(self, due_in: float) -> None:
        """Every realm's refresh falls due `due_in` seconds from now."""
        for realm in self.realms:
            pair = self.sim.add_realm(realm)
            await self.gateways[0].tokens.import_tokens(
                realm, pair.refresh_token, pair.access_token, time.time() + MARGIN + due_in
            )

    async def _load(self, session: aiohttp.ClientSession, url: str, realm: str) -> None:
        target = f"{url}/v3/company/{realm}/companyinfo/{realm}"
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                async with session.get(target) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                status = 599
            self._count(status)
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))

    def _count(self, status: int) -> None:
        f = self.figures
        f.requests += 1
        if status == 429:
            f.refused += 1
        elif status != 200:
            f.failed += 1
            at = time.monotonic() - self._kill_at
            f.failed_first = at if f.failed_first is None else f.failed_first
            f.failed_last = at

    async def _watch(self) -> None:
        seen = [True] * len(self.gateways)
        while not self._stop.is_set():
            for i, gw in enumerate(self.gateways):
                if gw.availability.up != seen[i]:
                    seen[i] = gw.availability.up
                    at = time.monotonic() - self._kill_at
                    self.figures.transitions.append((at, i, seen[i]))
            await asyncio.sleep(0.01)

    async def run(self, *, before: float = 1.5, after: float = 1.0, timeout: float = 60) -> Figures:
        await self.seed(due_in=before + 0.3)
        key = RedisKeys(self.prefix).token(self.realms[0])
        session = aiohttp.ClientSession()
        tasks = [
            asyncio.create_task(self._load(session, url, realm))
            for url in self.urls
            for realm in self.realms
        ]
        self._kill_at = time.monotonic() + before
        watcher = asyncio.create_task(self._watch())
        try:
            await asyncio.sleep(before)  # the steady load before the kill
            dead = self.topology.master_of(key)
            dead.stop()
            await asyncio.to_thread(self.topology.wait_promoted, key, dead)
            self.figures.promoted_after = time.monotonic() - self._kill_at
            await self._until(lambda: self._settled(), timeout)
            await asyncio.sleep(after)  # steady load on shared state again
        finally:
            self._stop.set()
            await asyncio.gather(*tasks, watcher, return_exceptions=True)
            await session.close()
        return self._finish()

    def _settled(self) -> bool:
        all_up = all(gw.availability.up for gw in self.gateways)
        return all_up and self.sim.token_calls >= len(self.realms)

    async def _until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError("the fleet did not settle after the failover")
            await asyncio.sleep(0.02)

    def _finish(self) -> Figures:
        f = self.figures
        f.token_calls = self.sim.token_calls
        ups = [at for at, _i, up in f.transitions if up]
        f.shared_again_after = max(ups) if ups else 0.0
        for realm in self.realms:
            times = [r.at for r in self.sim.api_requests if f"/company/{realm}/" in r.path]
            f.max_per_realm_1s = max(f.max_per_realm_1s, _max_in_window(times, 1.0))
            f.max_per_realm_60s = max(f.max_per_realm_60s, _max_in_window(times, 60.0))
        return f

    async def close(self) -> None:
        for gw in self.gateways:
            with contextlib.suppress(Exception):
                await gw.close()
        for runner in self.runners:
            await runner.cleanup()
