"""The composition root: the one place that turns settings into running components.

`build_gateway` constructs every component with its collaborators injected (clock,
session, registry, state backends) and returns them in one `Gateway`, whose two aiohttp
applications (proxy and ops) tests can serve on real sockets; `daemon.serve` runs them.
Nothing below this module reads settings or the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from qbo_gateway.admission.gate import Admitter
from qbo_gateway.admission.records import AdmissionPolicy
from qbo_gateway.admission.retry import RetryBudget, RetryPolicy
from qbo_gateway.backends import build_backends
from qbo_gateway.cache.response_cache import ResponseCache
from qbo_gateway.clock import Clock, SystemClock
from qbo_gateway.edge.answers import ops_edge, proxy_edge
from qbo_gateway.edge.server import set_edge_limits
from qbo_gateway.health.wiring import Health, HealthOptions, HealthSources, build_health
from qbo_gateway.log_foreign import set_caller_key_hashes
from qbo_gateway.logs import failure, register_secrets
from qbo_gateway.metrics import Metrics
from qbo_gateway.oauth.connect import (
    ConnectFlow,
    MemoryOAuthStates,
    RedisOAuthStates,
    connect_routes,
)
from qbo_gateway.oauth.intuit import OAuthClient
from qbo_gateway.ops.health_api import add_health_routes
from qbo_gateway.ops.listener import ComponentState, Readiness, admin_authorized, build_ops_app
from qbo_gateway.ops.read_guard import read_guard
from qbo_gateway.proxy.callers import CallerRegistry, load_callers
from qbo_gateway.proxy.handler import Proxy
from qbo_gateway.proxy.upstream import Upstream, make_session
from qbo_gateway.settings import Settings, parse_expiry
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.locks import Locks
from qbo_gateway.state.redis_client import RedisClient
from qbo_gateway.tokens.crypto import TokenCipher, load_or_create_key_file
from qbo_gateway.tokens.manager import TokenManager
from qbo_gateway.tokens.records import TokenStatus, TokenStore

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
    proxy: Proxy
    proxy_app: web.Application
    ops_app: web.Application
    availability: BackendAvailability
    redis: RedisClient | None = None
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

    async def close(self) -> None:
        for task in self.background:
            task.cancel()
        for task in self.background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # A refresh in flight is never cut off: its new pair must be stored first.
        await self.tokens.drain()
        await self.admitter.drain()
        await self.health.close()
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


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text or None


def token_keys(settings: Settings) -> str:
    keys = _secret(settings.token_keys)
    if keys:
        return keys
    # Embedded mode only (settings refuse Redis mode without keys).
    return load_or_create_key_file(settings.state_dir)


async def build_gateway(
    settings: Settings,
    *,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    session: aiohttp.ClientSession | None = None,
    redis_prefix: str | None = None,
) -> Gateway:
    clock = clock or SystemClock()
    metrics = Metrics(registry)
    readiness = Readiness()
    register_secrets(
        [
            _secret(settings.client_secret),
            _secret(settings.admin_token),
            _secret(settings.ops_read_token),
            _secret(settings.access_token),
            _secret(settings.refresh_token),
            *(_secret(settings.token_keys) or "").split(","),
        ]
    )
    session = session or make_session(pool_size=settings.upstream_pool_size)
    upstream = Upstream(session)
    cipher = TokenCipher(token_keys(settings))
    policy = admission_policy(settings)
    backends = build_backends(
        topology=settings.redis_topology,
        prefix=redis_prefix or settings.redis_prefix,
        state_dir=settings.state_dir,
        replica_count=settings.replica_count,
        history_seconds=settings.health_history_seconds,
        cache_max_bytes=settings.cache_max_bytes,
        cipher=cipher,
        policy=policy,
        clock=clock,
        metrics=metrics,
    )
    redis, keys, availability = backends.redis, backends.keys, backends.availability
    store, locks, admission = backends.tokens, backends.locks, backends.admission
    cache_backend, health_store = backends.cache, backends.health

    # The monitor observes the token manager and the proxy, and probes through the proxy:
    # it is built first, with late-bound callables into components built just below.
    async def probe(realm_id: str) -> None:
        await proxy.probe(realm_id)

    async def realm_ids() -> list[str]:
        return await tokens.realm_ids()

    async def token_statuses() -> list[TokenStatus]:
        return await tokens.statuses()

    async def token_status(realm_id: str) -> TokenStatus | None:
        return await tokens.status(realm_id)

    health = build_health(
        HealthOptions.from_settings(settings),
        store=health_store,
        clock=clock,
        metrics=metrics,
        sources=HealthSources(
            realm_ids=realm_ids,
            token_statuses=token_statuses,
            token_status=token_status,
            load=admission.load,
            probe=probe,
        ),
        session=session,
        policy=policy,
        backend_up=lambda: availability.up,
    )
    observer = health.observer
    admitter = Admitter(admission, policy=policy, clock=clock, metrics=metrics, observer=observer)
    cache = ResponseCache(
        cache_backend,
        clock=clock,
        metrics=metrics,
        observer=observer,
        fresh_seconds=settings.cache_fresh_seconds,
        stale_seconds=settings.cache_stale_seconds,
        max_entry_bytes=settings.cache_max_entry_bytes,
    )
    oauth = OAuthClient(
        session=session,
        client_id=settings.client_id,
        client_secret=_secret(settings.client_secret) or "",
        token_url=settings.token_endpoint,
        authorize_url=settings.authorize_endpoint,
        revoke_url=settings.revoke_endpoint,
        clock=clock,
        timeout=settings.token_timeout_seconds,
    )
    caller_list = load_callers(settings.callers_file) if settings.callers_file else None
    # Library log text may quote a caller's key from a malformed header: find it by hash.
    set_caller_key_hashes(c.key_sha256.hex() for c in caller_list or [])
    callers = CallerRegistry(caller_list)
    tokens = TokenManager(
        store=store,
        locks=locks,
        oauth=oauth,
        clock=clock,
        metrics=metrics,
        observer=observer,
        margin=settings.refresh_margin_seconds,
        token_timeout=settings.token_timeout_seconds,
        availability=availability,
    )
    proxy = Proxy(
        api_base=settings.api_base,
        minor_version=settings.minor_version,
        callers=callers,
        tokens=tokens,
        upstream=upstream,
        clock=clock,
        metrics=metrics,
        observer=observer,
        gate=admitter,
        retry=RetryPolicy(budget=RetryBudget(ratio=settings.retry_budget_ratio)),
        cache=cache,
        max_body_bytes=settings.max_body_bytes,
        request_timeout=settings.request_timeout_seconds,
    )
    proxy_app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[proxy_edge()])
    proxy_app.router.add_route("*", "/{tail:.*}", proxy.handle)

    async def force_refresh(realm_id: str) -> dict[str, object]:
        status = await tokens.force_refresh(realm_id)
        return {
            "realm_id": status.realm_id,
            "refreshed": True,
            "access_expires_at": status.access_expires_at,
            "refresh_expires_at": status.refresh_expires_at,
            "needs_reconnect": status.needs_reconnect,
        }

    ops_app = build_ops_app(
        readiness=readiness,
        registry=metrics.registry,
        admin_token=_secret(settings.admin_token),
        force_refresh=force_refresh,
    )
    admin_token = _secret(settings.admin_token)
    states = RedisOAuthStates(redis, keys) if redis is not None else MemoryOAuthStates(clock)
    ops_host = "127.0.0.1" if settings.ops_host in ("0.0.0.0", "::") else settings.ops_host  # noqa: S104
    flow = ConnectFlow(
        oauth=oauth,
        tokens=tokens,
        states=states,
        redirect_uri=settings.redirect_uri
        or f"http://{ops_host}:{settings.ops_port}/oauth/callback",
    )

    async def admin_guard(request: web.Request) -> bool:
        # Starting a connection hands out an Intuit consent link: admins only.
        return admin_authorized(request, admin_token)

    ops_app.add_routes(connect_routes(flow, guard=admin_guard))
    add_health_routes(ops_app, health, admin_token=admin_token)
    ops_app.middlewares.append(ops_edge())
    ops_app.middlewares.append(read_guard(_secret(settings.ops_read_token), admin_token))
    set_edge_limits(
        {
            "proxy": (proxy_app, settings.proxy_max_connections),
            "ops": (ops_app, settings.ops_max_connections),
        },
        header_timeout=settings.header_timeout_seconds,
        registry=metrics.registry,
    )
    gateway = Gateway(
        settings=settings,
        clock=clock,
        metrics=metrics,
        readiness=readiness,
        session=session,
        upstream=upstream,
        store=store,
        locks=locks,
        tokens=tokens,
        admitter=admitter,
        cache=cache,
        health=health,
        proxy=proxy,
        proxy_app=proxy_app,
        ops_app=ops_app,
        availability=availability,
        redis=redis,
    )
    _add_readiness_checks(gateway, cipher_ok=True)
    await availability.check()
    # Writers only; the monitor loop and housekeeping start with the daemon.
    await health.open(background=False)
    await _bootstrap_realm(gateway)
    return gateway


def admission_policy(settings: Settings) -> AdmissionPolicy:
    return AdmissionPolicy(
        per_minute=settings.rate_limit_per_minute,
        per_second=settings.rate_limit_per_second,
        concurrency=settings.concurrency_limit,
        batch_per_minute=settings.batch_limit_per_minute,
        max_wait=settings.admission_wait_seconds,
        # A crashed replica's slot comes back once its request could no longer be running.
        lease_seconds=settings.request_timeout_seconds + 5.0,
        failure_threshold=settings.breaker_failure_threshold,
        recovery_seconds=settings.breaker_recovery_seconds,
        max_recovery_seconds=settings.breaker_max_recovery_seconds,
        throttle_cooldown=settings.throttle_cooldown_seconds,
    )


def _add_readiness_checks(gw: Gateway, *, cipher_ok: bool) -> None:
    async def settings_check() -> ComponentState:
        return ComponentState(True, f"environment={gw.settings.environment}")

    async def keys_check() -> ComponentState:
        return ComponentState(cipher_ok, "token keys loaded" if cipher_ok else "no usable key")

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
        return True, f"durability unknown ({type(exc).__name__})"


async def _bootstrap_realm(gw: Gateway) -> None:
    s = gw.settings
    if not s.realm_id or s.refresh_token is None:
        return
    try:
        imported = await gw.tokens.bootstrap(
            s.realm_id,
            _secret(s.access_token),
            _secret(s.refresh_token) or "",
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
