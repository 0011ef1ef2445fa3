"""Admission state held in this process: embedded mode, and the fallback while Redis is down.

It implements exactly the algorithm of `lua/admit.lua` and `lua/record.lua` (the same
behaviour suite runs against both), so a replica that loses Redis keeps the same rules with
its shared-out share of the limits. Every method runs without an `await` between reading
and writing a realm's state, which makes each call atomic within the event loop. A realm
whose state decides nothing any more (breaker closed without failures, no cool-down,
nothing in flight, its rate windows empty) is forgotten now and then, so memory follows
the realms in use, not every realm ever seen.
"""

from __future__ import annotations

import bisect
import itertools
import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field

from qbo_gateway.admission.records import (
    Admission,
    AdmissionPolicy,
    BreakerState,
    Outcome,
    RealmLoad,
    RefusalReason,
    Verdict,
)
from qbo_gateway.clock import Clock

MINUTE = 60.0
SECOND = 1.0
# Idle realms are forgotten once per this many admits (or per realm held, if more), so
# the sweep costs about one check per admit.
_SWEEP_EVERY = 1024
# How soon a request without a concurrency slot asks again: short, because a slot usually
# frees within one upstream round trip.
WAIT_POLL_SECONDS = 0.05


def reopen_seconds(policy: AdmissionPolicy, failed_probes: int, jitter: float) -> float:
    """Open time after `failed_probes` consecutive failed probes: doubling, capped, jittered.

    Jitter (0..1) takes up to 20% off so replicas' realms do not all probe at one instant;
    it never goes below the configured recovery time.
    """
    grown = min(policy.max_recovery_seconds, policy.recovery_seconds * 2.0**failed_probes)
    return max(policy.recovery_seconds, grown * (1.0 - 0.2 * jitter))


def reserve_time(
    now: float,
    policy: AdmissionPolicy,
    rate: list[float],
    batch: list[float] | None,
) -> tuple[float, RefusalReason]:
    """The earliest time a new request may reach QBO without breaking any rolling window.

    Reservations are FIFO (never before the last one); the L-th newest reservation plus the
    window bounds the next one, so no window of that length ever holds more than L.
    Also says which budget set that time (the batch one only when it is the tighter).
    """
    t = now
    if rate:
        t = max(t, rate[-1])
    if len(rate) >= policy.per_second:
        t = max(t, rate[-policy.per_second] + SECOND)
    if len(rate) >= policy.per_minute:
        t = max(t, rate[-policy.per_minute] + MINUTE)
    binding = RefusalReason.RATE
    if batch is not None:
        by_rate = t
        if batch:
            t = max(t, batch[-1])
        if len(batch) >= policy.batch_per_minute:
            t = max(t, batch[-policy.batch_per_minute] + MINUTE)
        if t > by_rate:
            binding = RefusalReason.BATCH
    return t, binding


# Slotted, windows as sorted lists (an empty deque is 600 bytes), and the batch window
# made on a realm's first batch: with 10,000 realms served, the deques and the dict were
# a tenth of the process's memory.
@dataclass(slots=True)
class _Realm:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    generation: int = 0
    open_until: float = 0.0
    failed_probes: int = 0
    probe_id: str | None = None
    probe_until: float = 0.0
    cooldown_until: float = 0.0
    rate: list[float] = field(default_factory=list)
    batch: list[float] | None = None
    leases: dict[str, float] = field(default_factory=dict)


def _idle(r: _Realm, now: float) -> bool:
    """Nothing here would decide anything: forgetting the realm changes no verdict."""
    return (
        r.state is BreakerState.CLOSED
        and r.failures == 0
        and r.cooldown_until <= now
        and all(expires <= now for expires in r.leases.values())
        and (not r.rate or r.rate[-1] <= now - MINUTE)
        and (not r.batch or r.batch[-1] <= now - MINUTE)
    )


def _prune(window: list[float], before: float) -> None:
    # Reservations are FIFO, so the window is sorted: one cut, not a pop per stamp.
    del window[: bisect.bisect_right(window, before)]


def _breaker_gate(r: _Realm, now: float) -> tuple[Admission | None, bool]:
    """A refusal while cooling down or open (or probing); else whether this is the probe."""
    if r.cooldown_until > now:
        return _refused(r, RefusalReason.THROTTLED, r.cooldown_until - now), False
    if r.state is BreakerState.OPEN:
        if r.open_until > now:
            return _refused(r, RefusalReason.CIRCUIT_OPEN, r.open_until - now), False
        return None, True
    if r.state is BreakerState.HALF_OPEN:
        if r.probe_id is not None and r.probe_until > now:
            return _refused(r, RefusalReason.CIRCUIT_OPEN, r.probe_until - now), False
        return None, True  # the previous probe never reported: its lease lapsed
    return None, False


def _refused(r: _Realm, reason: RefusalReason, retry_after: float) -> Admission:
    return Admission(
        Verdict.REFUSE, reason=reason, retry_after=retry_after, generation=r.generation
    )


class MemoryAdmission:
    """`AdmissionBackend` in one process's memory."""

    def __init__(
        self,
        policy: AdmissionPolicy,
        *,
        clock: Clock,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._random = random
        self._realms: dict[str, _Realm] = {}
        # Lease ids only need to be unique in this process (the fallback marks its own).
        self._lease_ids = itertools.count(1)
        self._admits_to_sweep = _SWEEP_EVERY

    @property
    def realms_held(self) -> int:
        """Realms with admission state kept here."""
        return len(self._realms)

    def _realm(self, realm_id: str) -> _Realm:
        realm = self._realms.get(realm_id)
        if realm is None:
            realm = self._realms[realm_id] = _Realm()
        return realm

    def _sweep(self, now: float) -> None:
        """Forget idle realms, so state grows with realms in use, not realms ever seen."""
        self._admits_to_sweep = max(_SWEEP_EVERY, len(self._realms))
        for realm_id in [k for k, r in self._realms.items() if _idle(r, now)]:
            del self._realms[realm_id]

    async def admit(self, realm_id: str, *, batch: bool = False) -> Admission:
        p = self.policy
        now = self._clock.now()
        self._admits_to_sweep -= 1
        if self._admits_to_sweep <= 0:
            self._sweep(now)
        r = self._realm(realm_id)
        refusal, becomes_probe = _breaker_gate(r, now)
        if refusal is not None:
            return refusal
        for lease_id, expires in list(r.leases.items()):
            if expires <= now:
                del r.leases[lease_id]
        if len(r.leases) >= p.concurrency:
            return Admission(
                Verdict.WAIT, delay=min(WAIT_POLL_SECONDS, p.max_wait), generation=r.generation
            )
        _prune(r.rate, now - MINUTE)
        if r.batch is not None:
            _prune(r.batch, now - MINUTE)
        if batch and r.batch is None:
            r.batch = []
        t, binding = reserve_time(now, p, r.rate, r.batch if batch else None)
        delay = t - now
        if delay > p.max_wait:
            return Admission(
                Verdict.REFUSE, reason=binding, retry_after=delay, generation=r.generation
            )
        return self._grant(r, now, t, batch=batch, probe=becomes_probe)

    def _grant(self, r: _Realm, now: float, t: float, *, batch: bool, probe: bool) -> Admission:
        """Reserve the slot at `t`, take a concurrency lease, and start a probe if due."""
        delay = t - now
        r.rate.append(t)
        if batch and r.batch is not None:
            r.batch.append(t)
        lease_id = f"{next(self._lease_ids):x}"
        r.leases[lease_id] = now + self.policy.lease_seconds + delay
        transition: BreakerState | None = None
        if probe:
            if r.state is not BreakerState.HALF_OPEN:
                transition = BreakerState.HALF_OPEN
            r.state = BreakerState.HALF_OPEN
            r.generation += 1
            r.probe_id = lease_id
            r.probe_until = now + self.policy.lease_seconds + delay
        return Admission(
            Verdict.ADMIT,
            delay=delay,
            lease_id=lease_id,
            generation=r.generation,
            probe=probe,
            transition=transition,
        )

    async def record(
        self,
        realm_id: str,
        admission: Admission,
        outcome: Outcome,
        *,
        retry_after: float | None = None,
    ) -> BreakerState | None:
        p = self.policy
        now = self._clock.now()
        r = self._realm(realm_id)
        if admission.lease_id is not None:
            r.leases.pop(admission.lease_id, None)
        if outcome is Outcome.THROTTLE:
            pause = retry_after if retry_after is not None and retry_after > 0 else None
            r.cooldown_until = max(r.cooldown_until, now + (pause or p.throttle_cooldown))
        current = admission.generation == r.generation
        is_probe = current and admission.probe and r.probe_id == admission.lease_id
        if outcome in (Outcome.THROTTLE, Outcome.ABANDONED):
            if is_probe:
                r.probe_id = None  # no verdict on QBO: let the next request probe
            return None
        if not current:
            return None  # it started under an earlier breaker state: no say over this one
        if outcome is Outcome.SUCCESS:
            r.failures = 0
            if r.state is BreakerState.HALF_OPEN and is_probe:
                r.state = BreakerState.CLOSED
                r.generation += 1
                r.failed_probes = 0
                r.probe_id = None
                return BreakerState.CLOSED
            return None
        # Outcome.FAILURE
        if r.state is BreakerState.HALF_OPEN:
            if not is_probe:
                return None
            r.state = BreakerState.OPEN
            r.generation += 1
            r.open_until = now + reopen_seconds(p, r.failed_probes + 1, self._random())
            r.failed_probes += 1
            r.probe_id = None
            return BreakerState.OPEN
        if r.state is BreakerState.CLOSED:
            r.failures += 1
            if r.failures >= p.failure_threshold:
                r.state = BreakerState.OPEN
                r.generation += 1
                r.open_until = now + p.recovery_seconds
                r.failed_probes = 0
                return BreakerState.OPEN
        return None

    async def reset_breaker(self, realm_id: str) -> None:
        r = self._realm(realm_id)
        r.state, r.generation = BreakerState.CLOSED, r.generation + 1
        r.failures, r.failed_probes, r.open_until = 0, 0, 0.0
        r.probe_id, r.probe_until = None, 0.0

    async def load(self, realm_id: str) -> RealmLoad:
        now = self._clock.now()
        r = self._realm(realm_id)
        _prune(r.rate, now - MINUTE)
        return RealmLoad(
            breaker=r.state,
            consecutive_failures=r.failures,
            open_until=r.open_until if r.state is BreakerState.OPEN else None,
            cooldown_until=r.cooldown_until if r.cooldown_until > now else None,
            requests_last_minute=sum(1 for t in r.rate if now - MINUTE < t <= now),
            requests_last_second=sum(1 for t in r.rate if now - SECOND < t <= now),
            in_flight=sum(1 for expires in r.leases.values() if expires > now),
            generation=r.generation,
        )

    async def close(self) -> None:
        self._realms.clear()
