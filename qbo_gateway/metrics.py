"""Every Prometheus metric the gateway exports, built on an injected registry.

Names are stable (dashboards, alert rules and the README's list depend on them; a test keeps
every name in METRIC_NAMES exported). Labels are bounded: never a realm id, never anything a
caller chooses freely, so a fleet with many realms does not grow many series.
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
    "qbo_gateway_coreplus_calls_total",
    "qbo_gateway_core_calls_total",
    "qbo_gateway_coreplus_month_calls",
)


class Metrics:
    """The gateway's metrics; one instance per registry, shared by every component."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._request_metrics()
        self._state_metrics()
        self._economy_metrics()
        self._initial_values()

    def _request_metrics(self) -> None:
        """What the request path records: requests, timings, refusals, retries, the cache."""
        self.requests = self._counter(
            "qbo_gateway_requests",
            "Proxied requests by method, outcome (upstream, cache_hit, stale, rejected, error) "
            "and code (HTTP status or GW- code)",
            "method",
            "outcome",
            "code",
        )
        self.request_duration = self._histogram(
            "qbo_gateway_request_duration_seconds",
            "Time from request arrival to the response's last byte, gateway included",
            "outcome",
        )
        self.upstream_duration = self._histogram(
            "qbo_gateway_upstream_request_duration_seconds",
            "Time QBO took to answer one upstream attempt (headers received)",
            "result",
        )
        self.rate_limited = self._counter(
            "qbo_gateway_rate_limited",
            "Requests refused or delayed by admission, by reason",
            "reason",
        )
        self.admissions = self._counter(
            "qbo_gateway_admissions",
            "Admission decisions by path: leased (no round trip), lease_wait (waited for a "
            "lease), per_request (admit.lua, or the local fallback)",
            "path",
        )
        self.stale_served = self._counter(
            "qbo_gateway_stale_served",
            "Reads answered from the cache in degraded mode, by reason",
            "reason",
        )
        self.upstream_retries = self._counter(
            "qbo_gateway_upstream_retries",
            "Upstream attempts repeated by the retry policy, by cause",
            "cause",
        )
        self.cache_events = self._counter(
            "qbo_gateway_cache_events",
            "Cache lookups and stores (hit, miss, store, skip, evict, queue_drop)",
            "event",
        )
        self.cache_bytes = self._gauge(
            "qbo_gateway_cache_bytes", "Bytes held by the in-process cache"
        )

    def _state_metrics(self) -> None:
        """What the rest reports: tokens, circuits, realms, alerts, the backend, the build."""
        self.token_refreshes = self._counter(
            "qbo_gateway_token_refreshes",
            "Token refreshes by result (success, failure, invalid_grant, invalid_client, skipped)",
            "result",
        )
        self.circuit_transitions = self._counter(
            "qbo_gateway_circuit_transitions",
            "Circuit breaker transitions made by this replica, by the state entered",
            "to",
        )
        self.realms = self._gauge(
            "qbo_gateway_realms", "Realms known to the gateway by health status", "status"
        )
        self.alerts_active = self._gauge(
            "qbo_gateway_alerts_active", "Active alerts by severity", "severity"
        )
        self.state_backend_up = self._gauge(
            "qbo_gateway_state_backend_up",
            "1 while the state backend (Redis, or the in-process store) is usable",
        )
        self.build_info = self._gauge("qbo_gateway_build_info", "Build information", "version")
        self.alert_deliveries = self._counter(
            "qbo_gateway_alert_deliveries", "Alert webhook deliveries by result", "result"
        )
        self.health_checks = self._counter(
            "qbo_gateway_health_checks", "Monitor probes by result", "result"
        )

    def _economy_metrics(self) -> None:
        """The app's metered (CorePlus) reads: calls by source and the month's figures."""
        self.coreplus_calls = self._counter(
            "qbo_gateway_coreplus_calls",
            "Metered (CorePlus) calls QBO answered, by source (caller, probe)",
            "source",
        )
        self.core_calls = self._counter(
            "qbo_gateway_core_calls", "Unmetered (Core) calls QBO answered: creates, updates"
        )
        self.coreplus_month = self._gauge(
            "qbo_gateway_coreplus_month_calls",
            "The month's metered calls, fleet-wide: used, limit, projected (month-end)",
            "figure",
        )

    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, *labels: str) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def _histogram(self, name: str, doc: str, *labels: str) -> Histogram:
        return Histogram(name, doc, labels, buckets=_LATENCY_BUCKETS, registry=self.registry)

    def _initial_values(self) -> None:
        # Pre-create label sets so dashboards see zeros instead of absent series.
        self.build_info.labels(version=__version__).set(1)
        for severity in ("warning", "critical"):
            self.alerts_active.labels(severity=severity).set(0)
        for status in ("healthy", "degraded", "unhealthy", "needs_reconnect"):
            self.realms.labels(status=status).set(0)
        self.state_backend_up.set(1)
        for source in ("caller", "probe"):
            self.coreplus_calls.labels(source=source)
        for figure in ("used", "limit", "projected"):
            self.coreplus_month.labels(figure=figure).set(0)
