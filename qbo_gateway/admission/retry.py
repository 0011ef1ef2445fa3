"""When the gateway may send a request to QBO again, decided in one place.

Retrying the wrong thing duplicates an invoice; retrying too much turns a QBO outage into
a storm. So a retry needs all of: a request that is safe to repeat (a read — GET or a POST
to .../query — or a write that failed before QBO could have received it), a failure worth
repeating (connection error, 502/503/504, one 500), a closed circuit, time left before the
request's deadline, and a token from the realm's retry budget (each request deposits 0.2,
each retry spends 1, so retries stay near 20% of traffic however long an outage lasts).
Backoff is full-jitter exponential and never shorter than QBO's Retry-After.

The caller (`proxy/exchange.py`) owns the I/O: it releases a discarded response before
asking, sleeps the returned delay on its Clock, and sends every attempt of a write with the
same `requestid` (`proxy.paths.Target.with_requestid`). Whether a request is a read is the
caller's to say (`proxy.paths.is_read`).
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable
from dataclasses import dataclass

from qbo_gateway.admission.records import BreakerState

RETRYABLE_STATUSES = frozenset({502, 503, 504})
# Intuit: "resubmit a 500 once".
MAX_500_RETRIES = 1


class Failure(enum.Enum):
    """How an attempt failed, as far as knowing whether QBO could have received it."""

    REFUSED = "refused"  # connection refused / DNS / TLS before sending: QBO saw nothing
    CONNECTION = "connection"  # reset, timeout, broken mid-way: QBO may have acted
    STATUS = "status"  # QBO (or its edge) answered with an HTTP status


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay: float = 0.0
    why: str = ""  # the reason, for logs and qbo_gateway_upstream_retries_total{cause}


class RetryBudget:
    """Per-realm token bucket: every request deposits `ratio`, every retry spends one."""

    def __init__(self, *, ratio: float = 0.2, cap: float = 10.0, initial: float = 3.0) -> None:
        self._ratio = ratio
        self._cap = cap
        self._initial = initial
        self._tokens: dict[str, float] = {}

    def deposit(self, realm_id: str) -> None:
        have = self._tokens.get(realm_id, self._initial)
        self._tokens[realm_id] = min(self._cap, have + self._ratio)

    def try_spend(self, realm_id: str) -> bool:
        have = self._tokens.get(realm_id, self._initial)
        if have < 1.0:
            return False
        self._tokens[realm_id] = have - 1.0
        return True

    @property
    def realms_held(self) -> int:
        """Realms with a balance kept here (every realm a request was planned for)."""
        return len(self._tokens)


class RetryPolicy:
    """Shared by all requests of a process; `start()` one `RetryPlan` per logical request."""

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        base_delay: float = 0.25,
        max_delay: float = 4.0,
        budget: RetryBudget | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.budget = budget or RetryBudget()
        self._random = random

    def start(self, realm_id: str, *, read: bool) -> RetryPlan:
        """`read`: the request is safe to repeat whatever happened to an attempt."""
        self.budget.deposit(realm_id)
        return RetryPlan(self, realm_id, read)

    def backoff(self, retry_number: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2^(n-1))]."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (retry_number - 1))
        return self._random() * ceiling


class RetryPlan:
    """One logical request's attempts; ask `after_failure` each time an attempt fails."""

    def __init__(self, policy: RetryPolicy, realm_id: str, read: bool) -> None:
        self._policy = policy
        self._realm_id = realm_id
        self.read = read
        self.attempts = 1
        self._retried_500 = 0

    def after_failure(
        self,
        failure: Failure,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        remaining: float,
        breaker: BreakerState = BreakerState.CLOSED,
    ) -> RetryDecision:
        """May the failed attempt be sent again, and after how long?

        `remaining`: seconds left before the request's deadline. `breaker`: the realm's
        state as last known (HALF_OPEN for the probe request itself).
        """
        cause = _cause(failure, status)
        if cause is None:
            return RetryDecision(False, why="not_retryable")
        if not self.read and failure is not Failure.REFUSED:
            return RetryDecision(False, why="unsafe_write")
        if breaker is not BreakerState.CLOSED:
            return RetryDecision(False, why="circuit")
        if self.attempts >= self._policy.max_attempts:
            return RetryDecision(False, why="attempts")
        if status == 500 and self._retried_500 >= MAX_500_RETRIES:
            return RetryDecision(False, why="attempts")
        delay = self._policy.backoff(self.attempts)
        if retry_after is not None and retry_after > delay:
            delay = retry_after
        if delay >= remaining:
            return RetryDecision(False, why="deadline")
        if not self._policy.budget.try_spend(self._realm_id):
            return RetryDecision(False, why="budget")
        self.attempts += 1
        if status == 500:
            self._retried_500 += 1
        return RetryDecision(True, delay=delay, why=cause)


def _cause(failure: Failure, status: int | None) -> str | None:
    if failure is Failure.REFUSED:
        return "connect_refused"
    if failure is Failure.CONNECTION:
        return "connection"
    if status in RETRYABLE_STATUSES:
        return f"status_{status}"
    if status == 500:
        return "status_500"
    return None
