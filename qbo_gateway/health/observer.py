"""The health subsystem's `Observer`: the one object the request path and tokens report to.

The proxy, admission and the token manager each hold this (not the whole subsystem): it
hands traffic events to `TrafficRules` and token events to `TokenRules`, and makes sure
that observing never fails the request or token call that reported it.
"""

from __future__ import annotations

import structlog

from qbo_gateway.admission.records import BreakerState
from qbo_gateway.faults import FaultClass
from qbo_gateway.health.token_rules import TokenRules
from qbo_gateway.health.traffic_rules import TrafficRules
from qbo_gateway.logs import failure
from qbo_gateway.observe import TokenEvent
from qbo_gateway.tokens.records import TokenRecord

log = structlog.get_logger(__name__)


class HealthObserver:
    """`Observer` for the health rules; every call is sync, O(1) and never raises."""

    def __init__(self, *, traffic: TrafficRules, token_rules: TokenRules) -> None:
        self.traffic = traffic
        self.token_rules = token_rules

    def request_finished(
        self,
        realm_id: str,
        *,
        outcome: str,
        status: int,
        latency: float,
        fault: FaultClass | None,
        probe: bool = False,
    ) -> None:
        try:
            self.traffic.request_finished(realm_id, outcome, status, latency, fault, probe)
        except Exception as exc:  # noqa: BLE001 - observing must never fail a request
            log.error("health_observe_failed", **failure(exc))

    def stale_served(self, realm_id: str, *, reason: str, age: float) -> None:
        try:
            self.traffic.stale_served(realm_id, reason=reason, age=age)
        except Exception as exc:  # noqa: BLE001 - observing must never fail a request
            log.error("health_observe_failed", **failure(exc))

    def breaker_changed(self, realm_id: str, state: BreakerState) -> None:
        try:
            self.traffic.breaker_changed(realm_id, state)
        except Exception as exc:  # noqa: BLE001 - observing must never fail a request
            log.error("health_observe_failed", **failure(exc))

    def throttled(self, realm_id: str, *, until: float) -> None:
        try:
            self.traffic.throttled(realm_id, until=until)
        except Exception as exc:  # noqa: BLE001 - observing must never fail a request
            log.error("health_observe_failed", **failure(exc))

    def token_event(
        self, realm_id: str, event: TokenEvent, record: TokenRecord | None = None
    ) -> None:
        try:
            self.token_rules.event(realm_id, event, record)
        except Exception as exc:  # noqa: BLE001 - observing must never fail a token call
            log.error("health_token_event_failed", **failure(exc))
