"""The reverse-proxy handler: the way of one request through the gateway.

    path check -> caller -> body (bounded) -> cache (fresh hit?) -> admission -> token
    -> upstream (retry policy, 401 replay) -> outcome recorded -> cache store -> caller

Every refusal is a `GatewayError` rendered as a QBO-shaped fault; a read that fails for a
reason degraded mode covers is answered from the cache when it can be. Response bodies
stream; a read's body is also collected (up to the cache's entry bound) to be stored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from qbo_gateway.admission.records import Outcome
from qbo_gateway.admission.retry import RetryPolicy
from qbo_gateway.cache.read_through import (
    CacheKey,
    ResponseCache,
    allows_fresh,
    allows_stale,
    cache_status_for_upstream,
    degraded_reason,
    degraded_reason_for_upstream,
)
from qbo_gateway.cache.records import CachedEntry
from qbo_gateway.clock import Clock
from qbo_gateway.faults import (
    CircuitOpen,
    FaultClass,
    GatewayError,
    PayloadTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
    render_fault,
)
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import NullObserver, Observer
from qbo_gateway.proxy.access_log import AccessLog, RequestRecord
from qbo_gateway.proxy.callers import CallerRegistry
from qbo_gateway.proxy.exchange import AdmissionGate, Exchange, QboCaller, TokenSource
from qbo_gateway.proxy.paths import Target, check_path, forward_headers, query_has, returned_headers
from qbo_gateway.proxy.upstream import Upstream

log = structlog.get_logger("qbo_gateway.access")

_CHUNK = 64 * 1024
_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


class Proxy:
    def __init__(
        self,
        *,
        api_base: str,
        minor_version: str,
        callers: CallerRegistry,
        tokens: TokenSource,
        upstream: Upstream,
        clock: Clock,
        metrics: Metrics,
        observer: Observer | None = None,
        gate: AdmissionGate | None = None,
        retry: RetryPolicy | None = None,
        cache: ResponseCache | None = None,
        max_body_bytes: int,
        request_timeout: float,
    ) -> None:
        self.callers = callers
        self.clock = clock
        self.metrics = metrics
        self.observer = observer or NullObserver()
        self.caller = QboCaller(
            api_base=api_base,
            minor_version=minor_version,
            tokens=tokens,
            upstream=upstream,
            clock=clock,
            metrics=metrics,
            gate=gate,
            retry=retry,
        )
        self.access = AccessLog(metrics=metrics, observer=self.observer)
        self.cache = cache
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout

    # --- the handler -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        rec = RequestRecord(request_id=_request_id(request), method=request.method)
        response: web.StreamResponse
        try:
            target = check_path(request.raw_path)
            rec.realm_id, rec.path = target.realm_id, target.rest
            caller = self.callers.authenticate(request.headers)
            rec.caller = caller.name
            self.callers.authorize(caller, target.realm_id)
            body = await self._read_body(request)
            response = await self._serve(request, target, body, rec)
        except GatewayError as err:
            response = self._refusal(err, rec)
        response.headers.setdefault("X-Request-Id", rec.request_id)
        response.headers.setdefault("Cache-Status", rec.cache_status)
        if not response.prepared:
            await response.prepare(request)
            # Everything up to here was one exchange; the body was set on the Response.
        rec.status = response.status
        self.access.finish(rec, time.perf_counter() - started)
        return response

    def _refusal(self, err: GatewayError, rec: RequestRecord) -> web.Response:
        rec.code = err.code
        upstream_side = isinstance(err, UpstreamUnavailable | UpstreamTimeout)
        rec.outcome = "error" if upstream_side or err.status >= 500 else "rejected"
        if isinstance(err, CircuitOpen):
            rec.outcome = "rejected"
        headers = {"X-Request-Id": rec.request_id}
        if rec.cache_status:
            headers["Cache-Status"] = rec.cache_status
        return render_fault(err, headers)

    async def _read_body(self, request: web.Request) -> bytes | None:
        if not request.body_exists:
            return None
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge(f"The body is {length} bytes; the limit is {self.max_body_bytes}")
        chunks: list[bytes] = []
        size = 0
        # Read in chunks and stop at the limit, so an oversized chunked body is refused
        # without ever being held whole.
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(f"The body exceeds the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # --- serving a checked request -----------------------------------------------------

    def is_read(self, method: str, target: Target) -> bool:
        return ResponseCache.is_read(method, target.rest)

    async def _serve(
        self, request: web.Request, target: Target, body: bytes | None, rec: RequestRecord
    ) -> web.StreamResponse:
        method = request.method
        read = self.is_read(method, target)
        if not read and not query_has(target.query, "requestid"):
            # One requestid per logical write, kept across retries, so QBO can de-duplicate.
            target = target.with_query(_add_param(target.query, "requestid", uuid.uuid4().hex))
        headers = forward_headers(request.headers)
        deadline = self.clock.monotonic() + self.request_timeout
        cache = self.cache if read and self.cache is not None and self.cache.enabled else None
        if cache is None:
            rec.cache_status = cache_status_for_upstream(stored=False, cacheable=False)
            exchange = await self.caller.call(method, target, headers, body, deadline, rec)
            if not read and 200 <= exchange.response.status < 300 and self.cache is not None:
                await self.cache.end_freshness(target.realm_id)
            return await self._relay(request, target, exchange, rec, None)

        cc = request.headers.get("Cache-Control")
        key = cache.key_for(
            target.realm_id,
            method,
            target.rest,
            _query_pairs(target.query),
            body or b"",
            headers.get("Accept"),
        )
        if cache.fresh_seconds > 0:
            found = await cache.lookup(key)
            entry = found.entry
            if entry is not None and cache.fresh(entry) and allows_fresh(cc):
                rec.outcome, rec.code = "cache_hit", str(entry.status)
                hit = cache.hit_response(entry)
                rec.cache_status = hit.headers["Cache-Status"]
                return hit
            slot = _CacheSlot(cache, key, entry, cc, found.epoch, cache.forward_reason(entry, cc))
        else:
            # Nothing stored can answer before QBO is asked (no freshness), so the entry is
            # only looked up if QBO fails: no cache round trip on the way to a success.
            slot = _CacheSlot(cache, key, None, cc, None, "miss", looked_up=False)
        rec.cache_status = cache_status_for_upstream(stored=False, cacheable=True, fwd=slot.fwd)
        try:
            if cache.fresh_seconds > 0:
                # Concurrent misses for one key share one upstream call, fully buffered.
                result = await cache.fetch_once(
                    key, lambda: self._buffered(method, target, headers, body, deadline, slot)
                )
                return await self._from_buffered(result, slot, rec)
            exchange = await self.caller.call(method, target, headers, body, deadline, rec)
        except GatewayError as err:
            stale = await self._stale(slot, degraded_reason(err), err.status, rec)
            if stale is not None:
                return stale
            raise
        if exchange.fault in (FaultClass.UPSTREAM_FAILURE, FaultClass.THROTTLE):
            reason = degraded_reason_for_upstream(exchange.response.status, exchange.body)
            stale = await self._stale(slot, reason, exchange.response.status, rec)
            if stale is not None:
                self.caller.settle(target.realm_id, exchange)
                exchange.response.release()
                return stale
        return await self._relay(request, target, exchange, rec, slot)

    async def _stale(
        self, slot: _CacheSlot, reason: str | None, fwd_status: int | None, rec: RequestRecord
    ) -> web.Response | None:
        if reason is None or not allows_stale(slot.cache_control):
            return None
        entry = slot.entry if slot.looked_up else (await slot.cache.lookup(slot.key)).entry
        if entry is None:
            return None
        if not slot.cache.servable_stale(entry):
            return None
        resp = slot.cache.stale_response(entry, reason, fwd_status=fwd_status)
        rec.outcome, rec.degraded, rec.code = "stale", reason, str(entry.status)
        rec.cache_status = resp.headers["Cache-Status"]
        return resp

    async def _buffered(
        self,
        method: str,
        target: Target,
        headers: CIMultiDict[str],
        body: bytes | None,
        deadline: float,
        slot: _CacheSlot,
    ) -> _Buffered:
        rec = RequestRecord(request_id="flight", method=method)
        exchange = await self.caller.call(method, target, headers, body, deadline, rec)
        upstream = exchange.response
        try:
            data = exchange.body if exchange.body is not None else await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            exchange.outcome = Outcome.FAILURE
            raise UpstreamUnavailable("QBO broke off the response") from exc
        finally:
            self.caller.settle(target.realm_id, exchange)
            upstream.release()
        out_headers = returned_headers(upstream.headers)
        stored = False
        if exchange.fault is FaultClass.OK:
            stored = await slot.cache.store(
                slot.key,
                upstream.status,
                list(out_headers.items()),
                data,
                request_cache_control=slot.cache_control,
                epoch=slot.epoch,
            )
        return _Buffered(
            upstream.status, list(out_headers.items()), data, exchange.fault, stored, rec
        )

    async def _from_buffered(
        self, result: _Buffered, slot: _CacheSlot, rec: RequestRecord
    ) -> web.Response:
        rec.attempts = result.rec.attempts
        rec.upstream_seconds = result.rec.upstream_seconds
        rec.intuit_tid = result.rec.intuit_tid
        rec.fault = result.fault
        if result.fault in (FaultClass.UPSTREAM_FAILURE, FaultClass.THROTTLE):
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

    async def _relay(
        self,
        request: web.Request,
        target: Target,
        exchange: Exchange,
        rec: RequestRecord,
        slot: _CacheSlot | None,
    ) -> web.StreamResponse:
        upstream = exchange.response
        headers = returned_headers(upstream.headers)
        rec.outcome = "upstream"
        rec.code = str(upstream.status)
        headers["Cache-Status"] = rec.cache_status
        headers["X-Request-Id"] = rec.request_id
        try:
            if exchange.body is None and _small(upstream):
                # A small body is read whole: one write back instead of a chunked stream.
                try:
                    exchange.body = await upstream.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    exchange.outcome = Outcome.FAILURE
                    self.caller.settle(target.realm_id, exchange)
                    raise UpstreamUnavailable("QBO broke off the response") from exc
                if slot is not None and exchange.fault is FaultClass.OK:
                    await self._store(slot, upstream.status, headers, exchange.body)
            if exchange.body is not None:
                self.caller.settle(target.realm_id, exchange)
                return web.Response(status=upstream.status, headers=headers, body=exchange.body)
            storable = slot is not None and exchange.fault is FaultClass.OK
            kept: list[bytes] | None = [] if storable else None
            kept_size = 0
            limit = slot.cache.max_entry_bytes if slot is not None else 0
            response = web.StreamResponse(status=upstream.status, headers=headers)
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
                    if kept is not None:
                        kept_size += len(chunk)
                        if kept_size > limit:
                            kept = None  # too big to cache: stop collecting, keep streaming
                        else:
                            kept.append(chunk)
                await response.write_eof()
            except (aiohttp.ClientError, TimeoutError) as exc:
                # QBO broke off mid-body: the caller sees a truncated response (the status
                # is already sent), and the realm is charged with an upstream failure.
                exchange.outcome = Outcome.FAILURE
                rec.outcome, rec.code = "error", "GW-UPSTREAM-UNAVAILABLE"
                log.warning("upstream_body_broken", error=type(exc).__name__)
                return response
            finally:
                self.caller.settle(target.realm_id, exchange)
            if kept is not None and slot is not None:
                await self._store(slot, upstream.status, headers, b"".join(kept))
            return response
        finally:
            upstream.release()

    async def _store(
        self, slot: _CacheSlot, status: int, headers: CIMultiDict[str], body: bytes
    ) -> None:
        await slot.cache.store(
            slot.key,
            status,
            list(headers.items()),
            body,
            request_cache_control=slot.cache_control,
            epoch=slot.epoch,
        )

    # --- monitor probes ----------------------------------------------------------------

    async def probe(self, realm_id: str) -> int:
        """A `companyinfo` read through the same admission, token and upstream path."""
        target = Target(realm_id, f"companyinfo/{realm_id}", "")
        rec = RequestRecord(request_id=f"probe-{uuid.uuid4().hex[:12]}", method="GET")
        rec.realm_id = realm_id
        headers: CIMultiDict[str] = CIMultiDict({"Accept": "application/json"})
        deadline = self.clock.monotonic() + self.request_timeout
        started = time.perf_counter()
        status = 0
        try:
            exchange = await self.caller.call("GET", target, headers, None, deadline, rec)
            try:
                await exchange.response.read()
            finally:
                status = exchange.response.status
                self.caller.settle(realm_id, exchange)
                exchange.response.release()
        except GatewayError as err:
            status = err.status
            rec.code = err.code
        self.observer.request_finished(
            realm_id,
            outcome="upstream" if not rec.code else "error",
            status=status,
            latency=rec.upstream_seconds or (time.perf_counter() - started),
            fault=rec.fault,
            probe=True,
        )
        return status


@dataclass(frozen=True)
class _CacheSlot:
    """One read's place in the cache: its key, what was found, and what the caller allows."""

    cache: ResponseCache
    key: CacheKey
    entry: CachedEntry | None
    cache_control: str | None
    epoch: int | None
    fwd: str
    looked_up: bool = True  # False: `entry` was not read (looked up only if QBO fails)


@dataclass(frozen=True)
class _Buffered:
    """A whole upstream answer, shareable by every request of a single flight."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    fault: FaultClass
    stored: bool
    rec: RequestRecord


_SMALL_BODY = 256 * 1024


def _small(response: aiohttp.ClientResponse) -> bool:
    length = response.content_length
    return length is not None and length <= _SMALL_BODY


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    if 0 < len(given) <= 128 and all(c in _REQUEST_ID_OK for c in given):
        return given
    return uuid.uuid4().hex


def _add_param(query: str, name: str, value: str) -> str:
    return f"{query}&{name}={value}" if query else f"{name}={value}"


def _query_pairs(query: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((name, value))
    return pairs


ProbeFn = Callable[[str], Awaitable[int]]
