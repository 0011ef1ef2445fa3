"""A built gateway: its parts, its two aiohttp applications, and its start and stop order.

The composition root (`app.build_gateway`) makes one `Gateway`; `commands/serve` runs it and
tests serve its applications on real sockets. The two applications share one session,
Redis client and token manager, so the gateway (not one `cleanup_ctx` per resource) owns
them and spells out the shutdown order: background loops, then refreshes in flight (a new
pair must be stored before anything closes), then admission records, health writers, and
the shared clients last.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from qbo_gateway.admission.gate import Admitter
from qbo_gateway.admission.leases import LeasedAdmission
from qbo_gateway.cache.response_cache import ResponseCache
from qbo_gateway.clock import Clock
from qbo_gateway.economy.meter import Meter
from qbo_gateway.health.wiring import Health
from qbo_gateway.metrics import Metrics
from qbo_gateway.ops.listener import ComponentState, Readiness
from qbo_gateway.proxy.handler import Proxy
from qbo_gateway.proxy.upstream import Upstream
from qbo_gateway.settings import Settings
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.locks import Locks
from qbo_gateway.state.redis_client import RedisClient
from qbo_gateway.tokens.manager import TokenManager
from qbo_gateway.tokens.records import TokenStore

log = structlog.get_logger(__name__)


@dataclass
class Gateway:
    settings: Settings
    clock: Clock
    metrics: Metrics
    readiness: Readiness
    session: aiohttp.ClientSession
    upstream: Upstream
    store: TokenStore
    locks: Locks
    tokens: TokenManager
    admitter: Admitter
    cache: ResponseCache
    health: Health
    meter: Meter
    proxy: Proxy
    proxy_app: web.Application
    ops_app: web.Application
    availability: BackendAvailability
    redis: RedisClient | None = None
    leases: LeasedAdmission | None = None  # Redis mode: leased admission's upkeep
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    closers: list[Any] = field(default_factory=list)

    async def start_background(self) -> None:
        """Start the loops a daemon runs (refresher, monitor); tests may skip them."""
        await self.health.open(background=True)
        self.background.append(
            asyncio.create_task(
                self.tokens.run_refresher(self.settings.refresh_interval_seconds),
                name="token-refresher",
            )
        )
        if self.leases is not None:
            self.background.append(asyncio.create_task(self.leases.run(), name="admission-leases"))
        # A refresh the last process left without an answer is checked now, not at the
        # realm's next refresh hours later.
        self.background.append(
            asyncio.create_task(self.tokens.check_unknown_outcomes(), name="token-check")
        )

    async def close(self, drain_timeout: float | None = None) -> None:
        for task in self.background:
            task.cancel()
        for task in self.background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # A refresh in flight gets the shutdown budget to store its pair; what the store
        # has not taken by then is in the spill file.
        await self.tokens.drain(drain_timeout)
        await self.admitter.drain()
        await self.cache.close()  # the stored reads still queued are written
        await self.meter.close()
        await self.health.close()
        if self.leases is not None:  # after the records above: every slot is back here
            with contextlib.suppress(Exception):  # what is not handed back lapses by itself
                await self.leases.release_all()
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                await closer()
        await self.availability.close()
        await self.store.close()
        await self.session.close()
        if self.redis is not None:
            # A connection cancelled mid-command can make redis-py's close wait on it;
            # shutdown must not hang on that (nothing is lost: tokens were stored above).
            try:
                async with asyncio.timeout(2.0):
                    await self.redis.aclose()
            except TimeoutError:
                log.warning("redis_close_timed_out")


def add_readiness_checks(gw: Gateway) -> None:
    """The components `/readyz` reports: settings, token keys, the state backend."""

    async def settings_check() -> ComponentState:
        return ComponentState(True, f"environment={gw.settings.environment}")

    async def keys_check() -> ComponentState:
        # The gateway was built, so the token cipher accepted the keys.
        return ComponentState(True, "token keys loaded")

    async def backend_check() -> ComponentState:
        durable, why = await store_durability(gw)
        warning = None if durable else why
        if gw.redis is None:
            return ComponentState(True, "embedded (in-process state, SQLite tokens)", warning)
        if gw.availability.up:
            return ComponentState(True, "redis reachable", warning)
        if gw.availability.ever_up:
            # Losing Redis must not take every pod out of service: keep serving locally.
            return ComponentState(True, "redis unreachable: serving with in-process state")
        return ComponentState(False, "redis never reached since start: no tokens")

    gw.readiness.add("settings", settings_check)
    gw.readiness.add("token_keys", keys_check)
    gw.readiness.add("state_backend", backend_check)


async def store_durability(gw: Gateway) -> tuple[bool, str]:
    try:
        return await gw.store.durability()
    except Exception as exc:  # noqa: BLE001 - unknown durability is reported, not fatal
        return True, f"durability unknown ({type(exc).__name__}: {exc})"
