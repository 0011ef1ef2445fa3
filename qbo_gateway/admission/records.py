"""What admission decides and remembers: policy numbers, verdicts, breaker states,
and the interface every admission backend implements."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Protocol


@dataclass(frozen=True)
class AdmissionPolicy:
    """The numbers admission enforces for every realm (from settings)."""

    per_minute: int = 500
    per_second: int = 10
    concurrency: int = 10
    batch_per_minute: int = 40
    max_wait: float = 5.0  # QBO_ADMISSION_WAIT_SECONDS
    lease_seconds: float = 30.0  # a concurrency slot lapses after this (the request deadline)
    failure_threshold: int = 5
    recovery_seconds: float = 300.0
    max_recovery_seconds: float = 1800.0  # cap for the growing open time after failed probes
    throttle_cooldown: float = 60.0

    def shared_out(self, replicas: int) -> AdmissionPolicy:
        """This policy divided among `replicas` (used while Redis is unreachable)."""
        n = max(1, replicas)
        return replace(
            self,
            per_minute=max(1, self.per_minute // n),
            per_second=max(1, self.per_second // n),
            concurrency=max(1, self.concurrency // n),
            batch_per_minute=max(1, self.batch_per_minute // n),
        )


class Verdict(enum.Enum):
    ADMIT = "admit"  # go, after `delay` seconds (a reserved rate slot)
    WAIT = "wait"  # no concurrency slot now: ask again after `delay`
    REFUSE = "refuse"  # see `reason` and `retry_after`


class RefusalReason(enum.StrEnum):
    CIRCUIT_OPEN = "circuit_open"
    THROTTLED = "throttled"  # QBO throttle cool-down
    RATE = "rate"  # per-minute / per-second budget
    BATCH = "batch"  # batch per-minute budget
    CONCURRENCY = "concurrency"


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    delay: float = 0.0
    reason: RefusalReason | None = None
    retry_after: float | None = None
    lease_id: str | None = None  # concurrency lease to hand back in `record`
    generation: int = 0  # breaker generation when admitted; stale outcomes are ignored
    probe: bool = False  # this request is the single half-open probe
    transition: BreakerState | None = None  # a breaker transition this call made


class Outcome(enum.StrEnum):
    SUCCESS = "success"  # QBO answered (2xx, or a caller error: QBO is fine)
    FAILURE = "failure"  # upstream failure: counts toward opening the circuit
    THROTTLE = "throttle"  # QBO throttled: cool down, not a failure
    ABANDONED = "abandoned"  # no verdict (caller left, auth path): just free the slot


@dataclass(frozen=True)
class RealmLoad:
    """What the health API shows of a realm's admission state."""

    breaker: BreakerState
    consecutive_failures: int
    open_until: float | None
    cooldown_until: float | None
    requests_last_minute: int
    requests_last_second: int
    in_flight: int
    generation: int


@dataclass(frozen=True)
class LeaseReturn:
    """Rate slots of one lease a replica hands back unspent (stamps as Redis holds them)."""

    stamp: str
    rate: int
    batch_stamp: str = ""
    batch: int = 0


@dataclass(frozen=True)
class LeaseAsk:
    """One replica's exchange with a realm's shared budget: what it wants, returns, holds."""

    rate: int
    batch: int = 0
    members: int = 0  # new concurrency slots wanted
    returned: tuple[LeaseReturn, ...] = ()
    returned_members: tuple[str, ...] = ()
    held_members: tuple[str, ...] = ()  # kept alive for another lease
    successes: int | None = None  # newest generation of unreported successes


@dataclass(frozen=True)
class LeaseGrant:
    """A slice of a realm's budget: `rate` slots stamped at `stamp` (the lease's end), to
    spend within `lease_seconds` of asking; `members` are concurrency slots now held.
    `refusal` set: no lease (breaker not closed, or cool-down): use the per-request path."""

    refusal: RefusalReason | None
    generation: int
    stamp: str = ""
    rate: int = 0
    batch_stamp: str = ""
    batch: int = 0
    members: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()  # held members the shared state no longer had


class AdmissionBackend(Protocol):
    """Breaker, rate windows, concurrency leases and cool-down for every realm.

    `admit` is one atomic step (one Redis round trip): it checks cool-down, breaker,
    concurrency and rate windows and, when it admits, reserves the rate slot (possibly
    in the near future: `delay`) and a concurrency lease. `record` frees the lease and
    feeds the outcome to the breaker (ignored when `generation` is stale).
    """

    async def admit(self, realm_id: str, *, batch: bool = False) -> Admission: ...

    async def record(
        self,
        realm_id: str,
        admission: Admission,
        outcome: Outcome,
        *,
        retry_after: float | None = None,
    ) -> BreakerState | None:
        """Returns the breaker state this outcome moved the realm to, if it moved it."""
        ...

    async def load(self, realm_id: str) -> RealmLoad: ...

    async def reset_breaker(self, realm_id: str) -> None:
        """Close the realm's circuit now (an operator's action): a new generation, so an
        outcome of a request admitted before has no say over it."""
        ...

    async def close(self) -> None: ...


class LeasingBackend(AdmissionBackend, Protocol):
    """A shared backend that can also lease slices of a realm's budget (`leases`)."""

    async def lease(self, realm_id: str, holder: str, ask: LeaseAsk) -> LeaseGrant | None:
        """One round trip; None when the shared state cannot be reached."""
        ...

    async def record_successes(self, realm_id: str, generation: int) -> None:
        """Successes of requests admitted at `generation`, reported together."""
        ...
