"""Entity reads past their freshness renewed by one change data capture (CDC) call per realm.

Intuit's advice for the metered API: when a cached read's TTL ends, ask CDC what changed
instead of reading every entity again. When an entity read (`GET {entity}/{Id}`) finds its
stored answer past its freshness, `CdcRefresher.revalidate` asks whether a CDC call proves
it current. One call per realm at a time (a single flight here, and a lock shared by the
replicas), at most one per realm every `interval` seconds, covering every entity type this
realm's reads have asked about, `changedSince` the realm's previous CDC call minus a margin:

- a changed entity's stored read gets the answer's object as its body;
- a deleted entity's stored read is forgotten, so the next read asks QBO (which answers
  its fault);
- every other stored read of those types, read after `changedSince`, is proven current as
  of the call: fresh again for its own freshness, counted from the call.

The outcome is kept as the realm's *proof* (when the call was sent, its `changedSince`, the
realm's freshness epoch before it, the entity types), stored with the cache's entries so
every replica uses it. A write through the gateway after the call (a new epoch) voids it.
An answer of 1000 objects may have left changes out, and QBO looks back 30 days at most:
then the proof vouches for nothing read before the call, so those reads go to QBO once
more and the next call starts from there. A failed or refused call (the read guard near the
month's cap treats it as a background read) leaves every read to its normal way to QBO.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import structlog
from multidict import CIMultiDict

from qbo_gateway.cache.cdc_answer import (
    CDC_ENTITIES,
    MAX_LOOKBACK,
    CdcChanges,
    cdc_entity,
    cdc_query,
    entity_body,
    parse_cdc,
    same_version,
)
from qbo_gateway.cache.policy import CacheKey, key_for
from qbo_gateway.cache.records import CachedEntry
from qbo_gateway.cache.response_cache import ResponseCache
from qbo_gateway.clock import Clock
from qbo_gateway.faults import FaultClass, GatewayError
from qbo_gateway.logs import failure
from qbo_gateway.metrics import Metrics
from qbo_gateway.proxy.access_log import RequestRecord
from qbo_gateway.proxy.exchange import Exchange, QboRequest
from qbo_gateway.proxy.paths import Target
from qbo_gateway.single_flight import SingleFlight
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.state.locks import Locks

log = structlog.get_logger(__name__)

CDC_CALLER = "qbo-gateway-cdc"  # the meter's name for the gateway's own CDC calls
_PROOF_KEY = "cdc-proof"  # not a hex digest: no read's key can be it


class _Qbo(Protocol):
    async def call(self, req: QboRequest, rec: RequestRecord) -> Exchange: ...


class _Guard(Protocol):
    def check(self, *, background: bool) -> None: ...


@dataclass(frozen=True)
class CdcProof:
    """What the realm's last CDC call proved, and from when."""

    at: float  # when the call was sent: what it vouches for is current as of then
    epoch: int  # the realm's freshness epoch before the call
    # Per entity type (path name) it covered: reads stored from then on are vouched for.
    # This call's changedSince plus the margin, or, for a type the previous call covered and
    # this one asked from, what that one vouched from.
    vouch_from: dict[str, float]

    @property
    def entities(self) -> frozenset[str]:
        return frozenset(self.vouch_from)

    def encode(self) -> bytes:
        return json.dumps({"at": self.at, "epoch": self.epoch, "from": self.vouch_from}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> CdcProof | None:
        try:
            meta = json.loads(raw)
            vouch_from = {str(e): float(t) for e, t in meta["from"].items()}
            return cls(
                float(meta["at"]),
                int(meta["epoch"]),
                {e: t for e, t in vouch_from.items() if e in CDC_ENTITIES},
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Renewed:
    """A stored read a CDC call proved current, and when."""

    entry: CachedEntry
    validated_at: float


class CdcRefresher:
    """Per realm: the CDC proof, the call that makes it, and what it changes in the cache."""

    def __init__(
        self,
        cache: ResponseCache,
        qbo: _Qbo,
        *,
        locks: Locks,
        clock: Clock,
        metrics: Metrics,
        interval: float,
        margin: float,
        lookback: float,
        request_timeout: float,
        guard: _Guard | None = None,
    ) -> None:
        self._cache = cache
        self._qbo = qbo
        self._locks = locks
        self._clock = clock
        self._metrics = metrics
        self.interval = interval
        self._margin = margin
        # How far back the first call of a realm looks: as old as any stored read can be.
        self._lookback = min(lookback + margin, MAX_LOOKBACK - margin)
        self._timeout = request_timeout
        self._guard = guard
        self._flights: SingleFlight[str, CdcProof | None] = SingleFlight("cdc")
        self._asked: dict[str, set[str]] = {}  # realm -> entity types its reads stored or asked
        self._failed_at: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def held(self, target: Target) -> None:
        """A read of `target` was stored: the realm's next CDC call covers its entity type."""
        entity = cdc_entity(target.rest, "", None)
        if entity is not None:
            self._asked.setdefault(target.realm_id, set()).add(entity)

    async def revalidate(
        self, req: QboRequest, key: CacheKey, entry: CachedEntry
    ) -> Renewed | None:
        """The stored read proven current by the realm's CDC (calling it when due), or None."""
        target = req.target
        entity = cdc_entity(target.rest, target.query, req.headers.get("Accept"))
        fresh_for = self._cache.freshness(entry)
        if entity is None or fresh_for <= 0:
            return None
        realm_id = target.realm_id
        asked = self._asked.setdefault(realm_id, set())
        asked.add(entity)
        proof, epoch = await self._proof(realm_id)
        if proof is not None and self._vouches(proof, entry, entity, epoch, fresh_for):
            return Renewed(entry, proof.at)
        if not self._due(realm_id, proof, entity):
            return None
        proof = await self._flights.run(realm_id, lambda: self._refresh(realm_id))
        if proof is None:
            return None
        # The call may have replaced or forgotten this very entry.
        found = await self._cache.lookup(key)
        if found.entry is None or found.epoch is None:
            return None
        if self._vouches(proof, found.entry, entity, found.epoch, fresh_for):
            return Renewed(found.entry, proof.at)
        return None

    # --- the proof --------------------------------------------------------------------

    def _vouches(
        self, proof: CdcProof, entry: CachedEntry, entity: str, epoch: int, fresh_for: float
    ) -> bool:
        return (
            entity in proof.entities
            and proof.epoch == epoch
            and proof.vouch_from[entity] <= entry.stored_at <= proof.at
            and self._clock.now() < proof.at + fresh_for
        )

    def _due(self, realm_id: str, proof: CdcProof | None, entity: str) -> bool:
        """At most one call per realm per interval (a type no call covered yet may ask)."""
        now = self._clock.now()
        if now - self._failed_at.get(realm_id, -self.interval) < self.interval:
            return False
        return proof is None or now - proof.at >= self.interval or entity not in proof.entities

    async def _proof(self, realm_id: str) -> tuple[CdcProof | None, int]:
        try:
            held, epoch = await self._cache.backend.get(realm_id, _PROOF_KEY)
        except (StateUnavailable, ValueError) as exc:
            log.debug("cdc_proof_unreadable", realm_id=realm_id, **failure(exc))
            return None, -1
        return (CdcProof.decode(held.body) if held is not None else None), epoch

    async def _keep(self, realm_id: str, proof: CdcProof) -> None:
        entry = CachedEntry(realm_id, 200, (), proof.encode(), proof.at, proof.epoch)
        try:
            await self._cache.backend.put(realm_id, _PROOF_KEY, entry, ttl=MAX_LOOKBACK)
        except StateUnavailable as exc:
            log.debug("cdc_proof_not_kept", realm_id=realm_id, **failure(exc))

    # --- the call ---------------------------------------------------------------------

    async def _refresh(self, realm_id: str) -> CdcProof | None:
        """One CDC call for the realm, unless another replica holds its lock."""
        owner = uuid.uuid4().hex
        name = f"cdc:{realm_id}"
        try:
            if not await self._locks.acquire(name, owner, self._timeout + 5.0):
                return None  # another replica is calling: these reads go their own way
        except StateUnavailable:
            pass  # Redis down: this process's single flight is all there is
        try:
            proof, epoch = await self._proof(realm_id)
            entities = frozenset(self._asked.get(realm_id, ())) | (
                proof.entities if proof is not None else frozenset()
            )
            recent = proof is not None and self._clock.now() - proof.at < self.interval
            if proof is not None and recent and entities <= proof.entities:
                return proof  # another replica called while this one waited
            return await self._call(realm_id, proof, epoch, entities)
        finally:
            with contextlib.suppress(StateUnavailable):
                await self._locks.release(name, owner)

    async def _call(
        self, realm_id: str, last: CdcProof | None, epoch: int, entities: frozenset[str]
    ) -> CdcProof | None:
        at = self._clock.now()
        since = last.at - self._margin if last is not None else at - self._lookback
        oldest = at - MAX_LOOKBACK + self._margin
        # Asked from the previous call, this one carries on what that one vouched for.
        carried = last.vouch_from if last is not None and since >= oldest else {}
        since = max(since, oldest)
        query = cdc_query(sorted(entities), since)
        req = QboRequest(
            "GET",
            Target(realm_id, "cdc", query),
            CIMultiDict({"Accept": "application/json"}),
            None,
            self._clock.monotonic() + self._timeout,
            read=True,
            caller=CDC_CALLER,
            background=True,
        )
        rec = RequestRecord(request_id=f"cdc-{uuid.uuid4().hex[:12]}", method="GET")
        changes: CdcChanges | None = None
        try:
            if self._guard is not None:
                self._guard.check(background=True)
            exchange = await self._qbo.call(req, rec)
            _, body = await exchange.read_whole()
            if exchange.fault is FaultClass.OK and exchange.response.status == 200:
                changes = parse_cdc(body)
        except GatewayError as err:
            log.info("cdc_refused", realm_id=realm_id, code=err.code)
        if changes is None:
            self._failed_at[realm_id] = at
            self._event("cdc_failed")
            return None
        self._failed_at.pop(realm_id, None)
        self._event("cdc_call")
        applied = not changes.truncated and await self._apply(realm_id, changes, at)
        if changes.truncated:
            # What was left out is unknown: vouch for nothing read before this call.
            self._event("cdc_truncated")
            log.info("cdc_truncated", realm_id=realm_id, objects=changes.count)
        # Unless every change is in the cache, vouch for nothing read before this call.
        vouch_from = {
            e: (carried.get(e, since + self._margin) if applied else at) for e in entities
        }
        proof = CdcProof(at, epoch, vouch_from)
        await self._keep(realm_id, proof)
        return proof

    async def _apply(self, realm_id: str, changes: CdcChanges, at: float) -> bool:
        """Changed entities' stored reads get the new body; deleted ones are forgotten.

        False when the cache could not take every change (Redis down).
        """
        cache = self._cache
        for (entity, entity_id), row in changes.objects.items():
            digest = key_for(realm_id, "GET", f"{entity}/{entity_id}", [], b"", None).digest
            try:
                if row is None:
                    await cache.backend.delete(realm_id, digest)
                    self._event("cdc_deleted")
                    continue
                held, _ = await cache.backend.get(realm_id, digest)
                if held is None or same_version(held.body, entity, row):
                    continue  # not stored, or already this version: vouched for as it is
                body = entity_body(entity, row, at)
                headers = _json_headers(held.headers)
                # Epoch -1 matches no realm's: this body is only ever served on a proof.
                fresh = CachedEntry(realm_id, 200, headers, body, at, -1, fresh_for=held.fresh_for)
                ttl = max(cache.fresh_seconds, cache.stale_seconds, held.fresh_for or 0.0)
                await cache.backend.put(realm_id, digest, fresh, ttl=ttl)
                self._event("cdc_changed")
            except (StateUnavailable, ValueError) as exc:
                log.info("cdc_apply_failed", realm_id=realm_id, **failure(exc))
                return False
        return True

    def _event(self, event: str) -> None:
        self._metrics.cache_events.labels(event=event).inc()


def _json_headers(held: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    kept = tuple((k, v) for k, v in held if k.lower() == "content-type")
    return kept or (("Content-Type", "application/json"),)
