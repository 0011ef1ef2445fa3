"""What the request path tells operations, through one narrow interface.

The proxy, the token manager and admission report events here; the health monitor and
alert rules (health.py, alerts.py) implement `Observer`. Calls are synchronous and must
never block or fail a request: an implementation buffers and does its I/O elsewhere.
`NullObserver` lets components run (and be tested) without the health machinery.
"""

from __future__ import annotations

from typing import Literal, Protocol

from qbo_gateway.admission.records import BreakerState
from qbo_gateway.faults import FaultClass
from qbo_gateway.tokens.records import TokenRecord

TokenEvent = Literal[
    "refreshed",  # a refresh stored a new pair
    "refresh_failed",  # a transient failure; the access token may still be valid
    "reconnect_required",  # invalid_grant confirmed: a person must reconnect the realm
    "reconnected",  # new tokens arrived for a realm that needed reconnecting
    "imported",  # tokens were imported or connected
    "removed",  # tokens were revoked and removed
    "store_rolled_back",  # the store held an older pair than it had acknowledged
]


class Observer(Protocol):
    def request_finished(
        self,
        realm_id: str,
        *,
        outcome: str,  # upstream | cache_hit | stale | rejected | error
        status: int,
        latency: float,  # seconds, upstream time when it went upstream
        fault: FaultClass | None,
        probe: bool = False,  # a monitor probe rather than live traffic
    ) -> None: ...

    def stale_served(self, realm_id: str, *, reason: str, age: float) -> None: ...

    def breaker_changed(self, realm_id: str, state: BreakerState) -> None: ...

    def throttled(self, realm_id: str, *, until: float) -> None: ...

    def token_event(
        self, realm_id: str, event: TokenEvent, record: TokenRecord | None = None
    ) -> None: ...


class NullObserver:
    """Observes nothing; for components used without the health monitor."""

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
        return None

    def stale_served(self, realm_id: str, *, reason: str, age: float) -> None:
        return None

    def breaker_changed(self, realm_id: str, state: BreakerState) -> None:
        return None

    def throttled(self, realm_id: str, *, until: float) -> None:
        return None

    def token_event(
        self, realm_id: str, event: TokenEvent, record: TokenRecord | None = None
    ) -> None:
        return None
