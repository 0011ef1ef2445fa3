"""The composition root: the one place that turns settings into running components.

`build_gateway` reads like the gateway's parts list: the state backends for the mode
(backends.py), then one builder per subsystem, each in its own package's `wiring` module
(health, tokens, oauth, proxy, ops) and handed only what it needs, and one `Gateway`
holding the result (gateway.py). Health is built before the token manager and the proxy it
watches, so it reaches them through `_LateBound`, filled in as soon as they exist. Below
the wiring modules nothing reads settings or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from qbo_gateway.admission.gate import Admitter
from qbo_gateway.admission.records import AdmissionPolicy
from qbo_gateway.backends import StateBackends, build_backends
from qbo_gateway.cache.response_cache import ResponseCache
from qbo_gateway.clock import Clock, SystemClock
from qbo_gateway.economy.meter import Meter
from qbo_gateway.economy.wiring import build_meter, read_guard
from qbo_gateway.edge.server import set_edge_limits
from qbo_gateway.gateway import Gateway, add_readiness_checks, store_durability
from qbo_gateway.health.wiring import Health, HealthOptions, HealthSources, build_health
from qbo_gateway.logs import failure, register_secrets
from qbo_gateway.metrics import Metrics
from qbo_gateway.oauth.connect import ConnectFlow
from qbo_gateway.oauth.intuit import OAuthClient
from qbo_gateway.oauth.wiring import connect_flow, oauth_client
from qbo_gateway.observe import Observer
from qbo_gateway.ops.listener import Readiness
from qbo_gateway.ops.wiring import ops_app
from qbo_gateway.proxy.handler import Proxy
from qbo_gateway.proxy.upstream import Upstream, make_session
from qbo_gateway.proxy.wiring import admission_policy, build_proxy, proxy_app, response_cache
from qbo_gateway.settings import Settings, parse_expiry, secret_text
from qbo_gateway.tokens.manager import TokenManager
from qbo_gateway.tokens.records import TokenStatus
from qbo_gateway.tokens.wiring import build_token_manager, token_cipher, token_keys

__all__ = ["Gateway", "admission_policy", "build_gateway", "store_durability", "token_keys"]

log = structlog.get_logger(__name__)


async def build_gateway(
    settings: Settings,
    *,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    session: aiohttp.ClientSession | None = None,
    redis_prefix: str | None = None,
    redis_time: bool | None = None,
) -> Gateway:
    """Every component, wired. `redis_time`: the Redis scripts read Redis `TIME` (one clock
    for all replicas, as in production); by default they do unless a test injects a clock."""
    clock = clock or SystemClock()
    register_secrets(_secret_values(settings))
    core = _Core(
        settings,
        clock,
        Metrics(registry),
        session or make_session(pool_size=settings.upstream_pool_size),
        admission_policy(settings),
    )
    use_time = isinstance(clock, SystemClock) if redis_time is None else redis_time
    backends = _backends(core, redis_prefix, use_time)
    late = _LateBound()
    health = _health(core, backends, late)
    meter = build_meter(settings, backends.meter, clock=clock, metrics=core.metrics, health=health)
    oauth = oauth_client(settings, core.session, clock)
    tokens = late.tokens = _token_manager(core, backends, oauth, health.observer)
    path = late.path = _request_path(core, backends, tokens, health.observer, meter)
    flow = connect_flow(
        settings,
        oauth=oauth,
        tokens=tokens,
        redis=backends.redis,
        keys=backends.keys,
        clock=clock,
        session=core.session,
    )
    readiness = Readiness()
    proxy_listener, ops_listener = _applications(core, path, readiness, tokens, flow, health)
    gateway = Gateway(
        settings=settings,
        clock=clock,
        metrics=core.metrics,
        readiness=readiness,
        session=core.session,
        upstream=path.upstream,
        store=backends.tokens,
        locks=backends.locks,
        tokens=tokens,
        admitter=path.admitter,
        cache=path.cache,
        health=health,
        meter=meter,
        proxy=path.proxy,
        proxy_app=proxy_listener,
        ops_app=ops_listener,
        availability=backends.availability,
        redis=backends.redis,
        leases=backends.leases,
    )
    await _start(gateway, backends)
    return gateway


@dataclass(frozen=True)
class _Core:
    """What every subsystem's builder is handed."""

    settings: Settings
    clock: Clock
    metrics: Metrics
    session: aiohttp.ClientSession
    policy: AdmissionPolicy


@dataclass(frozen=True)
class _RequestPath:
    """The parts a proxied request goes through, in order."""

    admitter: Admitter
    cache: ResponseCache
    upstream: Upstream
    proxy: Proxy


def _secret_values(settings: Settings) -> list[str | None]:
    """Every configured secret, so the log redaction can find it in any text."""
    return [
        secret_text(settings.client_secret),
        secret_text(settings.admin_token),
        secret_text(settings.ops_read_token),
        secret_text(settings.access_token),
        secret_text(settings.refresh_token),
        *secret_text(settings.token_keys).split(","),
    ]


def _backends(core: _Core, redis_prefix: str | None, redis_time: bool) -> StateBackends:
    settings = core.settings
    return build_backends(
        topology=settings.redis_topology,
        prefix=redis_prefix or settings.redis_prefix,
        state_dir=settings.state_dir,
        replica_count=settings.replica_count,
        history_seconds=settings.health_history_seconds,
        bucket_seconds=settings.health_bucket_seconds,
        cache_max_bytes=settings.cache_max_bytes,
        cache_max_entry_bytes=settings.cache_max_entry_bytes,
        cipher=token_cipher(settings),
        policy=core.policy,
        clock=core.clock,
        script_clock=None if redis_time else core.clock,
        metrics=core.metrics,
        lease_seconds=settings.admission_lease_seconds,
    )


@dataclass
class _LateBound:
    """What health asks of the proxy and the token manager, which are built after it."""

    path: _RequestPath | None = None
    tokens: TokenManager | None = None

    def _manager(self) -> TokenManager:
        assert self.tokens is not None, "bound in build_gateway, before anything runs"
        return self.tokens

    async def probe(self, realm_id: str) -> None:
        assert self.path is not None, "bound in build_gateway, before anything runs"
        await self.path.proxy.probe(realm_id)

    async def token_statuses(self) -> list[TokenStatus]:
        return await self._manager().statuses()

    async def token_status(self, realm_id: str) -> TokenStatus | None:
        return await self._manager().status(realm_id)


def _health(core: _Core, backends: StateBackends, late: _LateBound) -> Health:
    availability = backends.availability
    return build_health(
        HealthOptions.from_settings(core.settings),
        store=backends.health,
        clock=core.clock,
        metrics=core.metrics,
        sources=HealthSources(
            token_statuses=late.token_statuses,
            token_status=late.token_status,
            load=backends.admission.load,
            probe=late.probe,
        ),
        session=core.session,
        policy=core.policy,
        backend_up=lambda: availability.up,
    )


def _token_manager(
    core: _Core, backends: StateBackends, oauth: OAuthClient, observer: Observer
) -> TokenManager:
    return build_token_manager(
        core.settings,
        store=backends.tokens,
        locks=backends.locks,
        availability=backends.availability,
        oauth=oauth,
        clock=core.clock,
        metrics=core.metrics,
        observer=observer,
    )


def _request_path(
    core: _Core, backends: StateBackends, tokens: TokenManager, observer: Observer, meter: Meter
) -> _RequestPath:
    clock, metrics = core.clock, core.metrics
    admitter = Admitter(
        backends.admission, policy=core.policy, clock=clock, metrics=metrics, observer=observer
    )
    cache = response_cache(
        core.settings, backends.cache, clock=clock, metrics=metrics, observer=observer
    )
    upstream = Upstream(core.session)
    proxy = build_proxy(
        core.settings,
        tokens=tokens,
        upstream=upstream,
        gate=admitter,
        cache=cache,
        clock=clock,
        metrics=metrics,
        observer=observer,
        meter=meter,
        guard=read_guard(core.settings, meter, metrics=metrics),
        locks=backends.locks,
    )
    return _RequestPath(admitter, cache, upstream, proxy)


def _applications(
    core: _Core,
    path: _RequestPath,
    readiness: Readiness,
    tokens: TokenManager,
    flow: ConnectFlow,
    health: Health,
) -> tuple[web.Application, web.Application]:
    settings, metrics = core.settings, core.metrics
    proxy_listener = proxy_app(settings, path.proxy)
    ops_listener = ops_app(
        settings,
        readiness=readiness,
        metrics=metrics,
        tokens=tokens,
        admitter=path.admitter,
        flow=flow,
        health=health,
        clock=core.clock,
    )
    set_edge_limits(
        {
            "proxy": (proxy_listener, settings.proxy_max_connections),
            "ops": (ops_listener, settings.ops_max_connections),
        },
        header_timeout=settings.header_timeout_seconds,
        registry=metrics.registry,
    )
    return proxy_listener, ops_listener


async def _start(gw: Gateway, backends: StateBackends) -> None:
    add_readiness_checks(gw)
    await backends.availability.check()
    # Writers only; the monitor loop and housekeeping start with the daemon.
    await gw.health.open(background=False)
    # Pairs spilled by the last run go back first: the store may have lost them, and
    # the bootstrap below must see them rather than import the environment's older pair.
    await gw.tokens.reconcile()
    await _bootstrap_realm(gw)


async def _bootstrap_realm(gw: Gateway) -> None:
    s = gw.settings
    if not s.realm_id or s.refresh_token is None:
        return
    try:
        imported = await gw.tokens.bootstrap(
            s.realm_id,
            secret_text(s.access_token) or None,
            secret_text(s.refresh_token),
            parse_expiry(s.access_token_expires_at),
        )
    except Exception as exc:  # noqa: BLE001 - a down backend must not stop start-up
        log.error("bootstrap_failed", realm_id=s.realm_id, **failure(exc))
        return
    log.info(
        "bootstrap_realm",
        realm_id=s.realm_id,
        imported=imported,
        note=None if imported else "the store already holds this realm; the environment is ignored",
    )
