"""The request path's builders: callers, the read cache, the proxy and its application."""

from __future__ import annotations

from aiohttp import web

from qbo_gateway.admission.gate import Admitter
from qbo_gateway.admission.records import AdmissionPolicy
from qbo_gateway.admission.retry import RetryBudget, RetryPolicy
from qbo_gateway.cache.cdc_refresh import CdcRefresher
from qbo_gateway.cache.read_through import BudgetGuard
from qbo_gateway.cache.records import CacheBackend
from qbo_gateway.cache.response_cache import ResponseCache
from qbo_gateway.clock import Clock
from qbo_gateway.economy.freshness import DEFAULT_ENTITY_FRESH, EntityFreshness, parse_entity_fresh
from qbo_gateway.edge.answers import proxy_refusal
from qbo_gateway.edge.server import EDGE_REFUSALS
from qbo_gateway.log_foreign import set_caller_key_hashes
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import Observer
from qbo_gateway.proxy.callers import CallerRegistry, load_callers
from qbo_gateway.proxy.exchange import CallMeter
from qbo_gateway.proxy.handler import Proxy
from qbo_gateway.proxy.upstream import Upstream
from qbo_gateway.settings import Settings
from qbo_gateway.state.locks import Locks
from qbo_gateway.tokens.manager import TokenManager


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


def caller_registry(settings: Settings) -> CallerRegistry:
    callers = load_callers(settings.callers_file) if settings.callers_file else None
    # Library log text may quote a caller's key from a malformed header: find it by hash.
    set_caller_key_hashes(c.key_sha256.hex() for c in callers or [])
    return CallerRegistry(callers)


def response_cache(
    settings: Settings,
    backend: CacheBackend,
    *,
    clock: Clock,
    metrics: Metrics,
    observer: Observer,
) -> ResponseCache:
    return ResponseCache(
        backend,
        clock=clock,
        metrics=metrics,
        observer=observer,
        fresh_seconds=settings.cache_fresh_seconds,
        stale_seconds=settings.cache_stale_seconds,
        max_entry_bytes=settings.cache_max_entry_bytes,
    )


def build_proxy(
    settings: Settings,
    *,
    tokens: TokenManager,
    upstream: Upstream,
    gate: Admitter,
    cache: ResponseCache,
    clock: Clock,
    metrics: Metrics,
    observer: Observer,
    meter: CallMeter | None = None,
    guard: BudgetGuard | None = None,
    locks: Locks | None = None,
) -> Proxy:
    freshness = EntityFreshness(
        {**DEFAULT_ENTITY_FRESH, **parse_entity_fresh(settings.cache_entity_fresh_seconds)},
        default=settings.cache_fresh_seconds,
        write_through=settings.cache_write_through_seconds,
    )
    proxy = Proxy(
        api_base=settings.api_base,
        minor_version=settings.minor_version,
        callers=caller_registry(settings),
        tokens=tokens,
        upstream=upstream,
        clock=clock,
        metrics=metrics,
        observer=observer,
        gate=gate,
        retry=RetryPolicy(budget=RetryBudget(ratio=settings.retry_budget_ratio)),
        cache=cache,
        meter=meter,
        guard=guard,
        freshness=freshness,
        max_body_bytes=settings.max_body_bytes,
        request_timeout=settings.request_timeout_seconds,
    )
    if locks is not None and settings.cache_cdc_interval_seconds > 0 and cache.enabled:
        proxy.reads.cdc = CdcRefresher(
            cache,
            proxy.caller,
            locks=locks,
            clock=clock,
            metrics=metrics,
            interval=settings.cache_cdc_interval_seconds,
            # A read is stored a request's time after QBO answered it, and QBO's clock may
            # differ from ours: changedSince reaches back this much further.
            margin=settings.request_timeout_seconds + 30.0,
            lookback=max(
                settings.cache_stale_seconds,
                settings.cache_write_through_seconds,
                *freshness.all_fresh(),
            ),
            request_timeout=settings.request_timeout_seconds,
            guard=guard,
        )
    return proxy


def proxy_app(settings: Settings, proxy: Proxy) -> web.Application:
    # No middleware: the handler refuses other methods itself, and the listener's runner
    # answers aiohttp's own refusals (no route, body too large) as the proxy's faults.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[EDGE_REFUSALS] = proxy_refusal
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app
