"""The interfaces every state backend implements, and the records they hold.

Two homes for shared state exist: in-process (embedded mode, with SQLite for tokens) and
Redis (several replicas). Policies (token refresh, admission, cache, health) are written
against these Protocols only, and one behaviour suite per Protocol runs against every
implementation, so "works in embedded mode" and "works with Redis" mean the same thing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Protocol


class StateUnavailable(Exception):
    """The backend cannot be reached right now (Redis down or slow). Callers fall back."""


# --- tokens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRecord:
    """One realm's OAuth tokens. `version` grows by one with every stored change."""

    realm_id: str
    access_token: str
    refresh_token: str
    access_expires_at: float  # epoch seconds; 0 means expired / unknown
    refresh_expires_at: float | None = None  # rolling expiry (x_refresh_token_expires_in)
    refresh_hard_expires_at: float | None = None  # opt-in hard expiry
    version: int = 0
    needs_reconnect: bool = False
    updated_at: float = 0.0

    def with_changes(self, **changes: object) -> TokenRecord:
        return replace(self, **changes)  # type: ignore[arg-type]

    def __repr__(self) -> str:  # never let a token reach a log through repr()
        return (
            f"TokenRecord(realm_id={self.realm_id!r}, version={self.version}, "
            f"access_expires_at={self.access_expires_at}, needs_reconnect={self.needs_reconnect})"
        )

    __str__ = __repr__


class TokenStore(Protocol):
    """Durable, encrypted, versioned token records.

    `put` is compare-and-set on the version: it stores `record` with version
    `expected_version + 1` (1 when `expected_version` is None, meaning "only if absent")
    and returns the stored record, or None when the current version is not the expected
    one. `force=True` overwrites whatever is there (import --force, connect) and still
    bumps the version past the current one, so a slower writer holding the old version
    can never overwrite it afterwards.
    """

    async def get(self, realm_id: str) -> TokenRecord | None: ...

    async def put(
        self, record: TokenRecord, *, expected_version: int | None, force: bool = False
    ) -> TokenRecord | None: ...

    async def delete(self, realm_id: str) -> bool: ...

    async def list_records(self) -> list[TokenRecord]: ...

    async def durability(self) -> tuple[bool, str]:
        """(durable, human explanation); False when a restart would lose every realm."""
        ...

    async def close(self) -> None: ...


class Locks(Protocol):
    """Named leases with an owner: acquire if free or lapsed; release only by the owner."""

    async def acquire(self, name: str, owner: str, lease_seconds: float) -> bool: ...

    async def release(self, name: str, owner: str) -> bool: ...


# --- admission (breaker + limits + throttle cool-down) ----------------------------------


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

    async def close(self) -> None: ...


# --- what operations read about a realm's tokens ------------------------------------------


@dataclass(frozen=True)
class TokenStatus:
    """A realm's token health, without any secret: for the health API and `tokens list`."""

    realm_id: str
    access_expires_at: float
    refresh_expires_at: float | None
    refresh_hard_expires_at: float | None
    needs_reconnect: bool
    version: int
    last_refresh_at: float | None = None
    last_refresh_error: str | None = None  # a short, secret-free description
    refresh_failing: bool = False  # token calls failing while the access token is valid
