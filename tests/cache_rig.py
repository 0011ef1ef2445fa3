"""A whole gateway in front of a holdable simulator, for the read cache's tests.

The simulator's application gets one extra middleware, `Hold`, that keeps matching API
requests waiting until the test opens it: that is how a test knows twenty reads are in
the gateway at once while QBO has not answered. `Rig.count_lookups` wraps the gateway's
real cache backend to set an event after N lookups, so a test knows every read has missed
(and joined the single flight) before QBO answers. Nothing here sleeps.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from qbo_gateway.app import Gateway, build_gateway
from qbo_gateway.cache.records import CacheBackend, CachedEntry
from qbo_gateway.clock import ManualClock
from qbo_gateway.simulator import Simulator
from tests.harness import CLIENT_ID, CLIENT_SECRET, REALM, settings_for


class Hold:
    """Keeps the simulator's API requests whose path holds `path` waiting while closed."""

    def __init__(self) -> None:
        self.path: str | None = None
        self._open = asyncio.Event()
        self.arrived = asyncio.Event()

    def close(self, path: str) -> None:
        self.path = path
        self._open.clear()
        self.arrived.clear()

    def open(self) -> None:
        self._open.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.path is not None and self.path in request.path and "/v3/company/" in request.path:
            self.arrived.set()
            await self._open.wait()
        response: web.StreamResponse = await handler(request)
        return response


class _CountingBackend:
    """The gateway's own backend, also setting an event once `wanted` lookups returned."""

    def __init__(self, inner: CacheBackend, wanted: int) -> None:
        self.inner = inner
        self.wanted = wanted
        self.reached = asyncio.Event()
        self.seen = 0

    async def get(self, realm_id: str, key_hash: str) -> tuple[CachedEntry | None, int]:
        found = await self.inner.get(realm_id, key_hash)
        self.seen += 1
        if self.seen >= self.wanted:
            self.reached.set()
        return found

    async def put(self, realm_id: str, key_hash: str, entry: CachedEntry, *, ttl: float) -> bool:
        return await self.inner.put(realm_id, key_hash, entry, ttl=ttl)

    async def delete(self, realm_id: str, key_hash: str) -> None:
        await self.inner.delete(realm_id, key_hash)

    async def epoch(self, realm_id: str) -> int:
        return await self.inner.epoch(realm_id)

    async def end_freshness(self, realm_id: str) -> int:
        return await self.inner.end_freshness(realm_id)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Rig:
    sim: Simulator
    hold: Hold
    gateway: Gateway
    url: str
    session: ClientSession
    clock: ManualClock
    registry: CollectorRegistry
    fresh: bool

    @property
    def miss_status(self) -> str:
        """Cache-Status of a read QBO answered and nothing was stored for."""
        # With freshness off nothing is looked up before QBO is asked: a plain miss.
        return "qbo-gateway; fwd=uri-miss" if self.fresh else "qbo-gateway; fwd=miss"

    @property
    def stored_status(self) -> str:
        """Cache-Status of a read QBO answered and the cache stored."""
        # With freshness off the body is relayed as it arrives and stored afterwards, so
        # its headers (sent first) cannot say `stored`; a later stale answer proves it.
        return "qbo-gateway; fwd=uri-miss; stored" if self.fresh else "qbo-gateway; fwd=miss"

    async def get(
        self, rest: str, realm: str = REALM, **kw: Any
    ) -> tuple[int, CIMultiDict[str], bytes]:
        url = f"{self.url}/v3/company/{realm}/{rest}"
        async with self.session.get(url, **kw) as resp:
            return resp.status, CIMultiDict(resp.headers), await resp.read()

    async def post(
        self, rest: str, body: bytes, realm: str = REALM
    ) -> tuple[int, CIMultiDict[str], bytes]:
        url = f"{self.url}/v3/company/{realm}/{rest}"
        headers = {"Content-Type": "application/json"}
        async with self.session.post(url, data=body, headers=headers) as resp:
            return resp.status, CIMultiDict(resp.headers), await resp.read()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def count_lookups(self, wanted: int) -> asyncio.Event:
        """An event set once `wanted` more cache lookups have returned."""
        counting = _CountingBackend(self.gateway.cache.backend, wanted)
        self.gateway.cache.backend = counting
        return counting.reached

    async def add_realm(self, realm_id: str) -> None:
        pair = self.sim.add_realm(realm_id)
        await self.gateway.tokens.import_tokens(
            realm_id, pair.refresh_token, pair.access_token, pair.access_expires_at, force=True
        )

    async def close(self) -> None:
        self.hold.open()
        await self.session.close()
        await self.gateway.close()


async def start_rig(
    aiohttp_server: Any, tmp_path: Path, redis_prefix: str, **overrides: Any
) -> Rig:
    clock = ManualClock()
    sim = Simulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, clock=clock.now)
    hold = Hold()
    app = sim.make_app()
    app.middlewares.append(hold.middleware)
    sim_server = await aiohttp_server(app)
    pair = sim.add_realm(REALM)
    sim_url = str(sim_server.make_url("")).rstrip("/")
    values: dict[str, Any] = {"cache_stale_seconds": 3600, "breaker_failure_threshold": 50}
    values.update(overrides)
    registry = CollectorRegistry()
    settings = settings_for(sim_url, tmp_path / "state", **values)
    gateway = await build_gateway(
        settings, clock=clock, registry=registry, redis_prefix=redis_prefix
    )
    await gateway.tokens.import_tokens(
        REALM, pair.refresh_token, pair.access_token, pair.access_expires_at, force=True
    )
    proxy_server = await aiohttp_server(gateway.proxy_app)
    url = str(proxy_server.make_url("")).rstrip("/")
    fresh = float(values.get("cache_fresh_seconds", 0)) > 0
    return Rig(sim, hold, gateway, url, ClientSession(), clock, registry, fresh)
