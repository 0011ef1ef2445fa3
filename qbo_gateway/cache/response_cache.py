"""The response cache's entries: looking them up, judging them, keeping them, answering.

`ResponseCache` is the part of the read cache that talks to a `CacheBackend` (in-process
LRU or Redis), which only keeps entries. It never fails a request: an unreachable or
corrupt backend is a miss, a store that fails is skipped. A write ends the realm's
freshness through a per-realm epoch, so a read stored before the write is only ever served
as stale. The decisions it applies are `policy`'s; `read_through` decides when to use it.
A read is stored after its reply has gone out (in Redis mode into the write-behind queue,
`write_behind`); a lookup of a key whose store is still on its way waits for it, so this
replica always finds what it has just answered.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from multidict import CIMultiDict

from qbo_gateway.cache.policy import (
    CACHE_NAME,
    DEGRADED_HEADER,
    DEGRADED_REASONS,
    FORWARDED_REASONS,
    CacheKey,
    allows_fresh,
    content_headers,
    storable,
)
from qbo_gateway.cache.records import CacheBackend, CachedEntry
from qbo_gateway.clock import Clock
from qbo_gateway.logs import failure
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import Observer
from qbo_gateway.state.errors import StateUnavailable

log = structlog.get_logger(__name__)

READ_BUDGET = "read-budget"  # Cache-Status detail of a read served to save a metered call
CDC_VALIDATED = "cdc-validated"  # Cache-Status detail of a read a CDC call proved current


@dataclass(frozen=True)
class CacheLookup:
    """What a lookup found, and the realm's freshness epoch before going upstream.

    Pass `epoch` back to `store`, so a read that raced a write is stored as already stale.
    """

    entry: CachedEntry | None
    epoch: int | None


class ResponseCache:
    """Stored reads over one backend; see the module docstring for why it exists."""

    def __init__(
        self,
        backend: CacheBackend,
        *,
        clock: Clock,
        metrics: Metrics,
        observer: Observer,
        fresh_seconds: float,
        stale_seconds: float,
        max_entry_bytes: int,
    ) -> None:
        self.backend = backend
        self._clock = clock
        self._metrics = metrics
        self._observer = observer
        self.fresh_seconds = max(0.0, fresh_seconds)
        self.stale_seconds = max(0.0, stale_seconds)
        self.max_entry_bytes = max_entry_bytes
        self._landing: dict[CacheKey, asyncio.Future[None]] = {}
        self._events: dict[str, Any] = {}  # labelled children: labels() locks on every call
        self._stale_counts: dict[str, Any] = {}

    @property
    def enabled(self) -> bool:
        return self.fresh_seconds > 0 or self.stale_seconds > 0

    # --- lookup and judgement ---------------------------------------------------------

    async def lookup(self, key: CacheKey) -> CacheLookup:
        """Never fails: an unreachable or corrupt backend is a miss."""
        if not self.enabled:
            return CacheLookup(None, None)
        landing = self._landing.get(key)
        if landing is not None:
            await asyncio.shield(landing)
        try:
            entry, epoch = await self.backend.get(key.realm_id, key.digest)
        except (StateUnavailable, ValueError) as exc:  # ValueError: CorruptEntry, bad epoch
            log.debug("cache_lookup_failed", **failure(exc))
            self._event("miss")
            return CacheLookup(None, None)
        if entry is not None and entry.realm_id != key.realm_id:
            entry = None
        self._event("hit" if entry is not None else "miss")
        return CacheLookup(entry, epoch)

    def freshness(self, entry: CachedEntry) -> float:
        """How long the entry stays fresh: its own (per entity, write-through) or the cache's."""
        return self.fresh_seconds if entry.fresh_for is None else entry.fresh_for

    def fresh(self, entry: CachedEntry) -> bool:
        """Young enough to serve without asking QBO, and no write to the realm since."""
        fresh_for = self.freshness(entry)
        return (
            fresh_for > 0
            and entry.age(self._clock.now()) < fresh_for
            and entry.fresh_epoch == entry.realm_epoch
        )

    def servable_stale(self, entry: CachedEntry) -> bool:
        return entry.age(self._clock.now()) < self.stale_seconds

    def forward_reason(self, entry: CachedEntry | None, request_cache_control: str | None) -> str:
        """Why a read goes upstream, for `cache_status_for_upstream(fwd=...)`."""
        if entry is None:
            return "uri-miss"
        if self.fresh(entry) and not allows_fresh(request_cache_control):
            return "request"
        return "stale"

    # --- store --------------------------------------------------------------------------

    async def store(
        self,
        key: CacheKey,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        *,
        request_cache_control: str | None,
        epoch: int | None = None,
        fresh_for: float | None = None,
    ) -> bool:
        """Store a read's answer if storable; True when stored. Never fails.

        `epoch` is `CacheLookup.epoch` from before the upstream call; without it the
        current epoch is read, and a write that finished during this read goes unseen.
        """
        if not self.enabled or not storable(
            status,
            body,
            max_entry_bytes=self.max_entry_bytes,
            request_cache_control=request_cache_control,
        ):
            self._event("skip")
            return False
        landed = asyncio.get_running_loop().create_future()
        self._landing[key] = landed
        try:
            stored = await self._put(key, status, headers, body, epoch, fresh_for)
        finally:
            if self._landing.get(key) is landed:
                del self._landing[key]
            landed.set_result(None)
        self._event("store" if stored else "skip")
        return stored

    async def _put(
        self,
        key: CacheKey,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        epoch: int | None,
        fresh_for: float | None,
    ) -> bool:
        try:
            if epoch is None and self.fresh_seconds <= 0 and not fresh_for:
                # Without freshness nothing is ever served young, so no epoch is read (one
                # Redis round trip less per read); -1 matches no realm epoch, so even a
                # replica configured with freshness never takes this entry as fresh.
                epoch = -1
            elif epoch is None:
                epoch = await self.backend.epoch(key.realm_id)
            entry = CachedEntry(
                realm_id=key.realm_id,
                status=status,
                headers=content_headers(headers),
                body=body,
                stored_at=self._clock.now(),
                fresh_epoch=epoch,
                fresh_for=fresh_for,
            )
            ttl = max(self.fresh_seconds, self.stale_seconds, fresh_for or 0.0)
            stored = await self.backend.put(key.realm_id, key.digest, entry, ttl=ttl)
        except StateUnavailable as exc:
            log.debug("cache_store_failed", **failure(exc))
            return False
        return stored

    async def end_freshness(self, realm_id: str) -> int | None:
        """After a successful write: the realm's stored reads stay servable only as stale.

        The realm's new epoch (under which the write's own answer may be kept), or None.
        """
        # Also while freshness is off: a replica (or a restart) with it on must not find
        # reads stored before this write still fresh.
        if not self.enabled:
            return None
        try:
            return await self.backend.end_freshness(realm_id)
        except StateUnavailable as exc:
            # Without the shared epoch, replicas may serve a pre-write read as fresh for at
            # most fresh_seconds; the write itself has succeeded and must not fail.
            log.warning("cache_end_freshness_failed", realm_id=realm_id, **failure(exc))
            return None

    async def close(self) -> None:
        """At shutdown: the home writes what it still holds back (the write-behind queue)."""
        await self.backend.close()

    # --- answers from the cache ---------------------------------------------------------

    def hit_response(self, entry: CachedEntry) -> web.Response:
        """A fresh entry served without asking QBO."""
        age = entry.age(self._clock.now())
        ttl = max(0, math.floor(self.freshness(entry) - age))
        headers = self._entry_headers(entry, age)
        headers["Cache-Status"] = f"{CACHE_NAME}; hit; ttl={ttl}"
        return web.Response(status=entry.status, body=entry.body, headers=headers)

    def validated_response(self, entry: CachedEntry, validated_at: float) -> web.Response:
        """A stored read past its freshness that a CDC call proved current at `validated_at`.

        It is fresh again for its own freshness from then; `Age` counts from then too, the
        time QBO last vouched for it (RFC 9111: since it was generated or validated).
        """
        now = self._clock.now()
        age = max(0.0, now - validated_at)
        ttl = max(0, math.floor(self.freshness(entry) - age))
        headers = self._entry_headers(entry, age)
        headers["Cache-Status"] = f"{CACHE_NAME}; hit; ttl={ttl}; detail={CDC_VALIDATED}"
        return web.Response(status=entry.status, body=entry.body, headers=headers)

    def stale_response(
        self, entry: CachedEntry, reason: str, *, fwd_status: int | None = None
    ) -> web.Response:
        """A stored read served because QBO failed; counted, and reported to health."""
        if reason not in DEGRADED_REASONS:
            raise ValueError(f"unknown degraded reason {reason!r}")
        age = entry.age(self._clock.now())
        ttl = math.floor(self.fresh_seconds - age)
        headers = self._entry_headers(entry, age)
        headers[DEGRADED_HEADER] = reason
        if fwd_status is not None or reason in FORWARDED_REASONS:
            status_part = f"; fwd-status={fwd_status}" if fwd_status is not None else ""
            cache_status = f"{CACHE_NAME}; fwd=stale{status_part}; ttl={ttl}; detail={reason}"
        else:
            cache_status = f"{CACHE_NAME}; hit; ttl={ttl}; detail={reason}"
        headers["Cache-Status"] = cache_status
        self._count_stale(reason)
        self._observer.stale_served(entry.realm_id, reason=reason, age=age)
        return web.Response(status=entry.status, body=entry.body, headers=headers)

    def budget_response(self, entry: CachedEntry) -> web.Response:
        """A stored read served beyond its freshness to save a metered (CorePlus) call."""
        age = entry.age(self._clock.now())
        ttl = math.floor(self.freshness(entry) - age)
        headers = self._entry_headers(entry, age)
        headers["Cache-Status"] = f"{CACHE_NAME}; hit; ttl={ttl}; detail={READ_BUDGET}"
        self._count_stale(READ_BUDGET)
        return web.Response(status=entry.status, body=entry.body, headers=headers)

    def _entry_headers(self, entry: CachedEntry, age: float) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict(entry.headers)
        headers["Age"] = str(math.floor(age))
        return headers

    def _count_stale(self, reason: str) -> None:
        child = self._stale_counts.get(reason)
        if child is None:
            child = self._stale_counts[reason] = self._metrics.stale_served.labels(reason=reason)
        child.inc()

    def _event(self, event: str) -> None:
        child = self._events.get(event)
        if child is None:
            child = self._events[event] = self._metrics.cache_events.labels(event=event)
        child.inc()
