"""Shared admission that survives Redis: Redis first, this replica's own share when it is down.

Losing Redis must not stop traffic (a sidecar that fails with its state store turns a
Redis outage into a QuickBooks outage for every service): while `BackendAvailability` says
Redis is down, every admit goes to an in-process backend holding this replica's share of
the limits (`policy.shared_out(replica_count)`), without paying a Redis timeout per
request; the availability probe brings shared state back. An admission handed out by the
local backend carries a marked lease id so its outcome is recorded where its lease lives.
Leases (`lease`) come from Redis only: while it is down there is none, and requests take
the per-request path to the local backend.
"""

from __future__ import annotations

import dataclasses

import structlog

from qbo_gateway.admission.records import (
    Admission,
    AdmissionBackend,
    BreakerState,
    LeaseAsk,
    LeaseGrant,
    LeasingBackend,
    Outcome,
    RealmLoad,
)
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.errors import StateUnavailable

log = structlog.get_logger(__name__)

_LOCAL = "local-"


class FallbackAdmission:
    """`AdmissionBackend`: `primary` (Redis) while reachable, else `fallback` (in-process).

    `fallback` must be built with `policy.shared_out(replica_count)`.
    """

    def __init__(
        self,
        primary: LeasingBackend,
        fallback: AdmissionBackend,
        *,
        availability: BackendAvailability,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._availability = availability

    async def admit(self, realm_id: str, *, batch: bool = False) -> Admission:
        if self._availability.up:
            try:
                admission = await self._primary.admit(realm_id, batch=batch)
            except StateUnavailable as exc:
                self._availability.mark_down(exc.__cause__ or exc)
            else:
                self._availability.mark_up()
                return admission
        admission = await self._fallback.admit(realm_id, batch=batch)
        if admission.lease_id is None:
            return admission
        return dataclasses.replace(admission, lease_id=_LOCAL + admission.lease_id)

    async def record(
        self,
        realm_id: str,
        admission: Admission,
        outcome: Outcome,
        *,
        retry_after: float | None = None,
    ) -> BreakerState | None:
        lease_id = admission.lease_id
        if lease_id is not None and lease_id.startswith(_LOCAL):
            local = dataclasses.replace(admission, lease_id=lease_id.removeprefix(_LOCAL))
            return await self._fallback.record(realm_id, local, outcome, retry_after=retry_after)
        if not self._availability.up:
            # The lease lapses in Redis by itself; the outcome is lost with the outage.
            return None
        try:
            return await self._primary.record(realm_id, admission, outcome, retry_after=retry_after)
        except StateUnavailable as exc:
            self._availability.mark_down(exc.__cause__ or exc)
            log.info("admission_outcome_dropped", realm_id=realm_id, outcome=outcome.value)
            return None

    async def lease(self, realm_id: str, holder: str, ask: LeaseAsk) -> LeaseGrant | None:
        if not self._availability.up:
            return None
        try:
            grant = await self._primary.lease(realm_id, holder, ask)
        except StateUnavailable as exc:
            self._availability.mark_down(exc.__cause__ or exc)
            return None
        self._availability.mark_up()
        return grant

    async def record_successes(self, realm_id: str, generation: int) -> None:
        if not self._availability.up:
            return  # lost with the outage, like any outcome then
        try:
            await self._primary.record_successes(realm_id, generation)
        except StateUnavailable as exc:
            self._availability.mark_down(exc.__cause__ or exc)

    async def load(self, realm_id: str) -> RealmLoad:
        if self._availability.up:
            try:
                return await self._primary.load(realm_id)
            except StateUnavailable as exc:
                self._availability.mark_down(exc.__cause__ or exc)
        return await self._fallback.load(realm_id)

    async def reset_breaker(self, realm_id: str) -> None:
        # Both: the local breaker decides while Redis is down, the shared one after.
        await self._fallback.reset_breaker(realm_id)
        if self._availability.up:
            await self._primary.reset_breaker(realm_id)

    async def close(self) -> None:
        await self._primary.close()
        await self._fallback.close()
