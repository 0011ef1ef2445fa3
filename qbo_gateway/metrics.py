"""Every Prometheus metric the gateway exports, built on an injected registry.

Names are part of the contract (section 7) and stable. Labels are bounded: never a realm
id, never anything a caller chooses freely.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from qbo_gateway import __version__

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)

METRIC_NAMES = (
    "qbo_gateway_requests_total",
    "qbo_gateway_request_duration_seconds",
    "qbo_gateway_upstream_request_duration_seconds",
    "qbo_gateway_token_refreshes_total",
    "qbo_gateway_circuit_transitions_total",
    "qbo_gateway_realms",
    "qbo_gateway_rate_limited_total",
    "qbo_gateway_stale_served_total",
    "qbo_gateway_alerts_active",
    "qbo_gateway_state_backend_up",
    "qbo_gateway_build_info",
    "qbo_gateway_upstream_retries_total",
    "qbo_gateway_cache_events_total",
    "qbo_gateway_cache_bytes",
    "qbo_gateway_alert_deliveries_total",
    "qbo_gateway_health_checks_total",
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "qbo_gateway_requests",
            "Proxied requests by method, outcome (upstream, cache_hit, stale, rejected, error) "
            "and code (HTTP status or GW- code)",
            ["method", "outcome", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "qbo_gateway_request_duration_seconds",
            "Time from request arrival to the response's last byte, gateway included",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "qbo_gateway_upstream_request_duration_seconds",
            "Time QBO took to answer one upstream attempt (headers received)",
            ["result"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.token_refreshes = Counter(
            "qbo_gateway_token_refreshes",
            "Token refreshes by result (success, failure, invalid_grant, invalid_client, skipped)",
            ["result"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            "qbo_gateway_circuit_transitions",
            "Circuit breaker transitions made by this replica, by the state entered",
            ["to"],
            registry=r,
        )
        self.realms = Gauge(
            "qbo_gateway_realms",
            "Realms known to the gateway by health status",
            ["status"],
            registry=r,
        )
        self.rate_limited = Counter(
            "qbo_gateway_rate_limited",
            "Requests refused or delayed by admission, by reason",
            ["reason"],
            registry=r,
        )
        self.stale_served = Counter(
            "qbo_gateway_stale_served",
            "Reads answered from the cache in degraded mode, by reason",
            ["reason"],
            registry=r,
        )
        self.alerts_active = Gauge(
            "qbo_gateway_alerts_active", "Active alerts by severity", ["severity"], registry=r
        )
        self.state_backend_up = Gauge(
            "qbo_gateway_state_backend_up",
            "1 while the state backend (Redis, or the in-process store) is usable",
            registry=r,
        )
        self.build_info = Gauge(
            "qbo_gateway_build_info", "Build information", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        self.upstream_retries = Counter(
            "qbo_gateway_upstream_retries",
            "Upstream attempts repeated by the retry policy, by cause",
            ["cause"],
            registry=r,
        )
        self.cache_events = Counter(
            "qbo_gateway_cache_events",
            "Cache lookups and stores (hit, miss, store, skip, evict)",
            ["event"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            "qbo_gateway_cache_bytes", "Bytes held by the in-process cache", registry=r
        )
        self.alert_deliveries = Counter(
            "qbo_gateway_alert_deliveries",
            "Alert webhook deliveries by result",
            ["result"],
            registry=r,
        )
        self.health_checks = Counter(
            "qbo_gateway_health_checks",
            "Monitor probes by result",
            ["result"],
            registry=r,
        )
        # Pre-create label sets so dashboards see zeros instead of absent series.
        for severity in ("warning", "critical"):
            self.alerts_active.labels(severity=severity).set(0)
        for status in ("healthy", "degraded", "unhealthy", "needs_reconnect"):
            self.realms.labels(status=status).set(0)
        self.state_backend_up.set(1)
