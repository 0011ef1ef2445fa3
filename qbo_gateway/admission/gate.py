"""The proxy's one door to admission: wait for a slot, or be refused honestly.

The state backend decides (breaker, cool-down, rate windows, concurrency leases); this
module turns its verdicts into what a request experiences: a short wait for a concurrency
slot, a sleep until the reserved rate slot, or a `RateLimited` / `CircuitOpen` carrying
Retry-After. Outcomes are recorded in the background so the response is never delayed by
the state backend, and every breaker transition is counted and logged exactly once (the
backend reports a transition only to the one call, on one replica, that made it).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from qbo_gateway.admission.records import (
    Admission,
    AdmissionBackend,
    AdmissionPolicy,
    BreakerState,
    Outcome,
    RefusalReason,
    Verdict,
)
from qbo_gateway.clock import Clock
from qbo_gateway.faults import CircuitOpen, GatewayError, RateLimited
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import NullObserver, Observer

log = structlog.get_logger(__name__)

# A concurrency refusal cannot know when a slot frees; one second is the shortest
# Retry-After a client can be told anyway.
CONCURRENCY_RETRY_AFTER = 1.0


class Admitter:
    """Acquire and release per-realm admission for proxied requests.

    `deadline` is a `clock.monotonic()` value: the request's own deadline
    (QBO_REQUEST_TIMEOUT_SECONDS from its arrival). A request never waits past it.
    """

    def __init__(
        self,
        backend: AdmissionBackend,
        *,
        policy: AdmissionPolicy,
        clock: Clock,
        metrics: Metrics,
        observer: Observer | None = None,
    ) -> None:
        self._backend = backend
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._observer: Observer = observer or NullObserver()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def backend(self) -> AdmissionBackend:
        return self._backend

    async def acquire(self, realm_id: str, *, batch: bool = False, deadline: float) -> Admission:
        give_up = min(deadline, self._clock.monotonic() + self._policy.max_wait)
        while True:
            admission = await self._backend.admit(realm_id, batch=batch)
            if admission.verdict is Verdict.ADMIT:
                self._transition(realm_id, admission.transition)
                await self._sleep_until_slot(realm_id, admission, deadline)
                return admission
            if admission.verdict is Verdict.WAIT:
                if self._clock.monotonic() + admission.delay > give_up:
                    raise self._refused(
                        RefusalReason.CONCURRENCY, CONCURRENCY_RETRY_AFTER, realm_id
                    )
                await self._clock.sleep(admission.delay)
                continue
            reason = admission.reason or RefusalReason.RATE
            raise self._refused(reason, admission.retry_after, realm_id)

    async def _sleep_until_slot(self, realm_id: str, admission: Admission, deadline: float) -> None:
        if admission.delay <= 0:
            return
        if self._clock.monotonic() + admission.delay >= deadline:
            self.release(realm_id, admission, Outcome.ABANDONED)
            raise self._refused(RefusalReason.RATE, admission.delay, realm_id)
        self._metrics.rate_limited.labels(reason="delayed").inc()
        try:
            await self._clock.sleep(admission.delay)
        except asyncio.CancelledError:
            self.release(realm_id, admission, Outcome.ABANDONED)
            raise

    def _refused(
        self, reason: RefusalReason, retry_after: float | None, realm_id: str
    ) -> GatewayError:
        self._metrics.rate_limited.labels(reason=reason.value).inc()
        wait = retry_after if retry_after is not None else CONCURRENCY_RETRY_AFTER
        log.debug("admission_refused", realm_id=realm_id, reason=reason.value, retry_after=wait)
        if reason is RefusalReason.CIRCUIT_OPEN:
            return CircuitOpen(retry_after=wait, reason=reason.value)
        return RateLimited(retry_after=wait, reason=reason.value)

    def release(
        self,
        realm_id: str,
        admission: Admission,
        outcome: Outcome,
        retry_after: float | None = None,
    ) -> None:
        """Record the outcome without delaying the caller; `drain()` waits for these."""
        if admission.verdict is not Verdict.ADMIT:
            return
        if outcome is Outcome.THROTTLE:
            pause = retry_after if retry_after and retry_after > 0 else None
            until = self._clock.now() + (pause or self._policy.throttle_cooldown)
            log.warning("realm_throttled", realm_id=realm_id, until=until)
            self._observer.throttled(realm_id, until=until)
        task = asyncio.get_running_loop().create_task(
            self._record(realm_id, admission, outcome, retry_after)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(
        self,
        realm_id: str,
        admission: Admission,
        outcome: Outcome,
        retry_after: float | None,
    ) -> None:
        try:
            moved = await self._backend.record(
                realm_id, admission, outcome, retry_after=retry_after
            )
        except Exception:  # a lost record only delays a lease's return; never crash the loop
            log.exception("admission_record_failed", realm_id=realm_id, outcome=outcome.value)
            return
        self._transition(realm_id, moved)

    def _transition(self, realm_id: str, state: BreakerState | None) -> None:
        if state is None:
            return
        self._metrics.circuit_transitions.labels(to=state.value).inc()
        log.warning("circuit_transition", realm_id=realm_id, to=state.value)
        with contextlib.suppress(Exception):  # an observer must never fail a request
            self._observer.breaker_changed(realm_id, state)

    async def reset_breaker(self, realm_id: str) -> None:
        """Close the realm's circuit now (admin action), reported like any transition."""
        await self._backend.reset_breaker(realm_id)
        self._transition(realm_id, BreakerState.CLOSED)

    async def drain(self) -> None:
        """Wait until every background record has finished (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
