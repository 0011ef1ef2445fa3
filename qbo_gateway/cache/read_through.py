"""The read cache wrapped around one logical QBO call.

When QBO fails for a realm (circuit open, throttled, 5xx, timeout, reconnect required) a
caller reading data is better served by the last good answer, clearly marked, than by an
error; optionally (`QBO_CACHE_FRESH_SECONDS` > 0) young answers are served without asking
QBO at all. `ReadThrough.send` is the whole of that behaviour, around the call:

    write                 -> QBO; a success ends the realm's freshness
    read, freshness on    -> fresh hit? an entity read past its freshness that the realm's
                             CDC call proves current (`cdc_refresh`)? else one shared
                             (single-flight) call, buffered, stored; a failure is
                             answered stale when allowed
    read, freshness off   -> QBO (streamed back, a copy stored); a failure answered stale

The proxy relays what comes back; it knows nothing of entries, keys or degraded reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict

from qbo_gateway.cache.cdc_refresh import CdcRefresher
from qbo_gateway.cache.policy import (
    CacheKey,
    allows_fresh,
    allows_stale,
    cache_status_for_upstream,
    degraded_reason,
    degraded_reason_for_upstream,
    key_for,
    query_pairs,
)
from qbo_gateway.cache.records import CachedEntry
from qbo_gateway.cache.response_cache import ResponseCache
from qbo_gateway.cache.write_through import write_through
from qbo_gateway.economy.freshness import EntityFreshness
from qbo_gateway.faults import FaultClass, GatewayError
from qbo_gateway.proxy.access_log import RequestRecord
from qbo_gateway.proxy.exchange import Exchange, QboRequest
from qbo_gateway.proxy.relay import Answer, Keep, Relay
from qbo_gateway.single_flight import SingleFlight

_FAILED = (FaultClass.UPSTREAM_FAILURE, FaultClass.THROTTLE)


class QboCall(Protocol):
    """One logical call to QBO (`proxy.exchange.QboCaller`)."""

    async def call(self, req: QboRequest, rec: RequestRecord) -> Exchange: ...


class BudgetGuard(Protocol):
    """The month's metered-read guard (`economy.guard.ReadGuard`); decides without I/O."""

    def serve_stale(self) -> bool: ...

    def check(self, *, background: bool) -> None: ...


class _NoGuard:
    def serve_stale(self) -> bool:
        return False

    def check(self, *, background: bool) -> None:
        return None


@dataclass(frozen=True)
class _Slot:
    """One read's place in the cache: its key, what was found, and what the caller allows."""

    key: CacheKey
    entry: CachedEntry | None
    cache_control: str | None
    epoch: int | None
    fwd: str
    looked_up: bool = True  # False: `entry` was not read (looked up only if QBO fails)
    fresh_for: float | None = None  # the read's own freshness (by entity)


@dataclass(frozen=True)
class _Buffered:
    """A whole upstream answer, shareable by every request of a single flight."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    fault: FaultClass
    stored: bool
    rec: RequestRecord


class ReadThrough:
    """The read cache around `qbo.call`; one per gateway."""

    def __init__(
        self,
        cache: ResponseCache,
        qbo: QboCall,
        guard: BudgetGuard | None = None,
        freshness: EntityFreshness | None = None,
    ) -> None:
        self.cache = cache
        self._qbo = qbo
        self._guard: BudgetGuard = guard or _NoGuard()
        self._fresh = freshness or EntityFreshness(
            {}, default=cache.fresh_seconds, write_through=0.0
        )
        # Concurrent fresh misses of one key share one upstream call, fully buffered.
        self._flights: SingleFlight[CacheKey, _Buffered] = SingleFlight("cache-read")
        self.cdc: CdcRefresher | None = None  # set by the wiring when CDC refresh is on

    async def send(self, req: QboRequest, cache_control: str | None, rec: RequestRecord) -> Answer:
        if not req.read:
            return await self._bypass(req, rec)
        key = self._key(req)
        if self._guard.serve_stale() and allows_stale(cache_control) and self.cache.enabled:
            # Near the month's cap a stored answer of any age (within the stale window)
            # beats a metered call; a caller asking for no-cache still goes to QBO.
            budget = await self._within_budget(key, rec)
            if budget is not None:
                return budget
        self._guard.check(background=req.background)
        if not self.cache.enabled:
            return await self._bypass(req, rec)
        target = req.target
        fresh_for = self._fresh.fresh_for(target.rest, target.query, req.body)
        if fresh_for > 0:
            return await self._fresh_read(req, key, cache_control, rec, fresh_for)
        if self._fresh.may_be_kept(target.rest) and allows_fresh(cache_control):
            # A write's answer may stand for this read: the one lookup before QBO.
            kept = (await self.cache.lookup(key)).entry
            if kept is not None and self.cache.fresh(kept):
                return self._hit(kept, rec)
            if kept is not None and self.cdc is not None:
                renewed = await self._renewed(req, key, kept, rec)
                if renewed is not None:
                    return renewed
        # Nothing stored can answer before QBO is asked (no freshness), so the entry is only
        # looked up if QBO fails: no cache round trip on the way to a success.
        slot = _Slot(key, None, cache_control, None, "miss", looked_up=False)
        return await self._read(req, slot, rec)

    @staticmethod
    def _key(req: QboRequest) -> CacheKey:
        target = req.target
        return key_for(
            target.realm_id,
            req.method,
            target.rest,
            query_pairs(target.query),
            req.body or b"",
            req.headers.get("Accept"),
        )

    async def _within_budget(self, key: CacheKey, rec: RequestRecord) -> web.Response | None:
        entry = (await self.cache.lookup(key)).entry
        if entry is None or not self.cache.servable_stale(entry):
            return None
        resp = self.cache.budget_response(entry)
        rec.outcome, rec.code = "stale", str(entry.status)
        rec.cache_status = resp.headers["Cache-Status"]
        return resp

    async def _bypass(self, req: QboRequest, rec: RequestRecord) -> Answer:
        rec.cache_status = cache_status_for_upstream(stored=False, cacheable=False)
        exchange = await self._qbo.call(req, rec)
        keep = None
        if not req.read and 200 <= exchange.response.status < 300:
            epoch = await self.cache.end_freshness(req.target.realm_id)
            if epoch is not None and self._fresh.write_through > 0:
                keep = write_through(self.cache, self._fresh, req, epoch)
        return Relay(exchange, keep)

    async def _read(self, req: QboRequest, slot: _Slot, rec: RequestRecord) -> Answer:
        """Freshness off: QBO's answer streams back and a copy is stored."""
        rec.cache_status = cache_status_for_upstream(stored=False, cacheable=True, fwd=slot.fwd)
        try:
            exchange = await self._qbo.call(req, rec)
        except GatewayError as err:
            return await self._stale_or_raise(slot, err, rec)
        status = exchange.response.status
        if exchange.fault in _FAILED:
            reason = degraded_reason_for_upstream(status, exchange.body)
            stale = await self._stale(slot, reason, status, rec)
            if stale is not None:
                exchange.close()
                return stale
        keep = self._keep(slot) if exchange.fault is FaultClass.OK else None
        return Relay(exchange, keep)

    async def _fresh_read(
        self,
        req: QboRequest,
        key: CacheKey,
        cache_control: str | None,
        rec: RequestRecord,
        fresh_for: float,
    ) -> Answer:
        """Freshness on: a fresh hit, or one buffered call shared by concurrent misses."""
        cache = self.cache
        found = await cache.lookup(key)
        entry = found.entry
        if entry is not None and cache.fresh(entry) and allows_fresh(cache_control):
            return self._hit(entry, rec)
        if entry is not None and self.cdc is not None and allows_fresh(cache_control):
            renewed = await self._renewed(req, key, entry, rec)
            if renewed is not None:
                return renewed
        fwd = cache.forward_reason(entry, cache_control)
        slot = _Slot(key, entry, cache_control, found.epoch, fwd, fresh_for=fresh_for)
        rec.cache_status = cache_status_for_upstream(stored=False, cacheable=True, fwd=fwd)
        try:
            result = await self._flights.run(key, lambda: self._buffered(req, slot))
        except GatewayError as err:
            return await self._stale_or_raise(slot, err, rec)
        return await self._from_buffered(result, slot, rec)

    def _hit(self, entry: CachedEntry, rec: RequestRecord) -> web.Response:
        rec.outcome, rec.code = "cache_hit", str(entry.status)
        hit = self.cache.hit_response(entry)
        rec.cache_status = hit.headers["Cache-Status"]
        return hit

    async def _renewed(
        self, req: QboRequest, key: CacheKey, entry: CachedEntry, rec: RequestRecord
    ) -> web.Response | None:
        """The stored read, past its freshness, when the realm's CDC proves it current."""
        assert self.cdc is not None
        renewed = await self.cdc.revalidate(req, key, entry)
        if renewed is None:
            return None
        rec.outcome, rec.code = "cache_hit", str(renewed.entry.status)
        hit = self.cache.validated_response(renewed.entry, renewed.validated_at)
        rec.cache_status = hit.headers["Cache-Status"]
        return hit

    async def _buffered(self, req: QboRequest, slot: _Slot) -> _Buffered:
        rec = RequestRecord(request_id="flight", method=req.method)
        exchange = await self._qbo.call(req, rec)
        headers, data = await exchange.read_whole()
        status = exchange.response.status
        stored = False
        if exchange.fault is FaultClass.OK:
            stored = await self._store(slot, status, headers, data)
            if stored and self.cdc is not None:
                self.cdc.held(req.target)
        return _Buffered(status, headers, data, exchange.fault, stored, rec)

    async def _from_buffered(
        self, result: _Buffered, slot: _Slot, rec: RequestRecord
    ) -> web.Response:
        rec.attempts = result.rec.attempts
        rec.upstream_seconds = result.rec.upstream_seconds
        rec.intuit_tid = result.rec.intuit_tid
        rec.fault = result.fault
        if result.fault in _FAILED:
            reason = degraded_reason_for_upstream(result.status, result.body)
            stale = await self._stale(slot, reason, result.status, rec)
            if stale is not None:
                return stale
        rec.outcome, rec.code = "upstream", str(result.status)
        if result.stored:
            rec.cache_status = cache_status_for_upstream(stored=True, cacheable=True, fwd=slot.fwd)
        headers = CIMultiDict(result.headers)
        headers["Cache-Status"] = rec.cache_status
        headers["X-Request-Id"] = rec.request_id
        return web.Response(status=result.status, headers=headers, body=result.body)

    async def _stale_or_raise(
        self, slot: _Slot, err: GatewayError, rec: RequestRecord
    ) -> web.Response:
        # No upstream status to name: the gateway refused, or QBO gave no answer at all.
        stale = await self._stale(slot, degraded_reason(err), None, rec)
        if stale is None:
            raise err
        return stale

    async def _stale(
        self, slot: _Slot, reason: str | None, fwd_status: int | None, rec: RequestRecord
    ) -> web.Response | None:
        """The stored read answering a failure, when the reason and the caller allow it."""
        if reason is None or not allows_stale(slot.cache_control):
            return None
        entry = slot.entry if slot.looked_up else (await self.cache.lookup(slot.key)).entry
        if entry is None or not self.cache.servable_stale(entry):
            return None
        resp = self.cache.stale_response(entry, reason, fwd_status=fwd_status)
        rec.outcome, rec.degraded, rec.code = "stale", reason, str(entry.status)
        rec.cache_status = resp.headers["Cache-Status"]
        return resp

    def _keep(self, slot: _Slot) -> Keep:
        async def store(status: int, headers: CIMultiDict[str], body: bytes) -> bool:
            return await self._store(slot, status, list(headers.items()), body)

        return Keep(self.cache.max_entry_bytes, store)

    async def _store(
        self, slot: _Slot, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> bool:
        return await self.cache.store(
            slot.key,
            status,
            headers,
            body,
            request_cache_control=slot.cache_control,
            epoch=slot.epoch,
            fresh_for=slot.fresh_for,
        )
