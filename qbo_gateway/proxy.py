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
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from qbo_gateway.cache import (
    CacheKey,
    ResponseCache,
    allows_fresh,
    allows_stale,
    cache_status_for_upstream,
    degraded_reason,
    degraded_reason_for_upstream,
)
from qbo_gateway.callers import CallerRegistry
from qbo_gateway.clock import Clock
from qbo_gateway.faults import (
    CircuitOpen,
    FaultClass,
    GatewayError,
    PayloadTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify,
    render_fault,
)
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import NullObserver, Observer
from qbo_gateway.paths import Target, check_path, forward_headers, query_has, returned_headers
from qbo_gateway.retry import Failure, RetryPolicy
from qbo_gateway.state.base import Admission, BreakerState, Outcome, Verdict
from qbo_gateway.state.cache_base import CachedEntry
from qbo_gateway.upstream import Upstream, UpstreamConnectError, UpstreamRequest

log = structlog.get_logger("qbo_gateway.access")

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_ERROR_BODY_LIMIT = 1024 * 1024  # QBO error bodies are small; never hold more to classify one
_CHUNK = 64 * 1024
_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")

# Refusals that say something about the realm's health (the others are the caller's).
_REALM_REFUSALS = frozenset({"GW-RATE-LIMITED", "GW-CIRCUIT-OPEN", "GW-RECONNECT-REQUIRED"})


class TokenSource(Protocol):
    async def access_token(self, realm_id: str) -> str: ...

    async def after_unauthorized(self, realm_id: str, used_token: str) -> str | None: ...


class AdmissionGate(Protocol):
    async def acquire(self, realm_id: str, *, batch: bool, deadline: float) -> Admission: ...

    def release(
        self,
        realm_id: str,
        admission: Admission,
        outcome: Outcome,
        retry_after: float | None = None,
    ) -> None: ...


class OpenGate:
    """Admits everything: for tests of the proxy alone."""

    async def acquire(self, realm_id: str, *, batch: bool, deadline: float) -> Admission:
        return Admission(verdict=Verdict.ADMIT)

    def release(
        self,
        realm_id: str,
        admission: Admission,
        outcome: Outcome,
        retry_after: float | None = None,
    ) -> None:
        return None


@dataclass
class RequestRecord:
    """What the summary log line and the metrics say about one request."""

    request_id: str
    method: str
    realm_id: str | None = None
    caller: str | None = None
    path: str | None = None
    status: int = 0
    outcome: str = "error"
    code: str = ""
    attempts: int = 0
    upstream_seconds: float = 0.0
    intuit_tid: str | None = None
    degraded: str | None = None
    cache_status: str = "qbo-gateway; fwd=bypass"
    fault: FaultClass | None = None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class Exchange:
    """An upstream answer whose admission slot is still held until its body is done."""

    response: aiohttp.ClientResponse
    admission: Admission
    fault: FaultClass
    body: bytes | None  # set when the body was read to classify it
    outcome: Outcome
    retry_after: float | None = None


def _retry_after(headers: CIMultiDict[str] | object) -> float | None:
    value = getattr(headers, "get", lambda _k: None)("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _outcome_for(fault: FaultClass) -> Outcome:
    if fault is FaultClass.UPSTREAM_FAILURE:
        return Outcome.FAILURE
    if fault is FaultClass.THROTTLE:
        return Outcome.THROTTLE
    return Outcome.SUCCESS


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
        self.api_base = api_base.rstrip("/")
        self.minor_version = minor_version
        self.callers = callers
        self.tokens = tokens
        self.upstream = upstream
        self.clock = clock
        self.metrics = metrics
        self.observer = observer or NullObserver()
        self.gate = gate or OpenGate()
        self.retry = retry or RetryPolicy()
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
        self._finish(rec, time.perf_counter() - started)
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

    def _finish(self, rec: RequestRecord, seconds: float) -> None:
        method = rec.method if rec.method in _METHODS else "OTHER"
        code = rec.code or str(rec.status)
        self.metrics.requests.labels(method=method, outcome=rec.outcome, code=code).inc()
        self.metrics.request_duration.labels(outcome=rec.outcome).observe(seconds)
        realm_verdict = rec.outcome != "rejected" or rec.code in _REALM_REFUSALS
        if rec.realm_id and realm_verdict:
            self.observer.request_finished(
                rec.realm_id,
                outcome=rec.outcome,
                status=rec.status,
                latency=rec.upstream_seconds or seconds,
                fault=rec.fault,
            )
        log.info(
            "request",
            request_id=rec.request_id,
            realm_id=rec.realm_id,
            caller=rec.caller,
            method=rec.method,
            path=rec.path,  # the query is never logged: it holds customers' SQL
            status=rec.status,
            outcome=rec.outcome,
            code=rec.code or None,
            duration_ms=round(seconds * 1000, 2),
            upstream_ms=round(rec.upstream_seconds * 1000, 2),
            attempts=rec.attempts,
            intuit_tid=rec.intuit_tid,
            degraded=rec.degraded,
            cache_status=rec.cache_status,
        )

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
            exchange = await self._exchange(method, target, headers, body, deadline, rec)
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
            exchange = await self._exchange(method, target, headers, body, deadline, rec)
        except GatewayError as err:
            stale = await self._stale(slot, degraded_reason(err), err.status, rec)
            if stale is not None:
                return stale
            raise
        if exchange.fault in (FaultClass.UPSTREAM_FAILURE, FaultClass.THROTTLE):
            reason = degraded_reason_for_upstream(exchange.response.status, exchange.body)
            stale = await self._stale(slot, reason, exchange.response.status, rec)
            if stale is not None:
                self._settle(target.realm_id, exchange)
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
        exchange = await self._exchange(method, target, headers, body, deadline, rec)
        upstream = exchange.response
        try:
            data = exchange.body if exchange.body is not None else await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            exchange.outcome = Outcome.FAILURE
            raise UpstreamUnavailable("QBO broke off the response") from exc
        finally:
            self._settle(target.realm_id, exchange)
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

    async def _exchange(
        self,
        method: str,
        target: Target,
        headers: CIMultiDict[str],
        body: bytes | None,
        deadline: float,
        rec: RequestRecord,
    ) -> Exchange:
        realm = target.realm_id
        url = target.upstream_url(self.api_base, self.minor_version)
        plan = self.retry.start(realm, method, f"/v3/company/{realm}/{target.rest}")
        auth_replayed = False
        while True:
            admission = await self.gate.acquire(realm, batch=target.is_batch, deadline=deadline)
            try:
                token = await self.tokens.access_token(realm)
            except BaseException:
                self.gate.release(realm, admission, Outcome.ABANDONED)
                raise
            out = headers.copy()
            out["Authorization"] = f"Bearer {token}"
            rec.attempts += 1
            breaker = BreakerState.HALF_OPEN if admission.probe else BreakerState.CLOSED
            t0 = self.clock.monotonic()
            try:
                response = await self.upstream.send(
                    UpstreamRequest(method, url, out, body),
                    budget=deadline - self.clock.monotonic(),
                )
            except GatewayError as err:
                elapsed = self.clock.monotonic() - t0
                rec.upstream_seconds += elapsed
                result = "timeout" if isinstance(err, UpstreamTimeout) else "connection_error"
                self.metrics.upstream_duration.labels(result=result).observe(elapsed)
                rec.fault = FaultClass.UPSTREAM_FAILURE
                self.gate.release(realm, admission, Outcome.FAILURE)
                refused = isinstance(err, UpstreamConnectError)
                decision = plan.after_failure(
                    Failure.REFUSED if refused else Failure.CONNECTION,
                    remaining=deadline - self.clock.monotonic(),
                    breaker=breaker,
                )
                if not decision.retry:
                    raise
                self.metrics.upstream_retries.labels(cause=decision.why).inc()
                await self.clock.sleep(decision.delay)
                continue
            elapsed = self.clock.monotonic() - t0
            rec.upstream_seconds += elapsed
            rec.intuit_tid = response.headers.get("intuit_tid") or rec.intuit_tid
            error_body: bytes | None = None
            if response.status >= 400:
                error_body = await _read_bounded(response, _ERROR_BODY_LIMIT)
            fault = classify(response.status, error_body)
            rec.fault = fault
            self.metrics.upstream_duration.labels(result=fault.value).observe(elapsed)
            retry_after = _retry_after(response.headers)
            if fault is FaultClass.AUTHENTICATION and not auth_replayed:
                # An expired or revoked access token says nothing about QBO's health.
                self.gate.release(realm, admission, Outcome.ABANDONED)
                try:
                    fresh = await self.tokens.after_unauthorized(realm, token)
                except BaseException:
                    response.release()
                    raise
                if fresh is not None:
                    response.release()
                    auth_replayed = True
                    continue
                admission = Admission(verdict=Verdict.ADMIT)  # already released
            if fault is FaultClass.UPSTREAM_FAILURE:
                decision = plan.after_failure(
                    Failure.STATUS,
                    status=response.status,
                    retry_after=retry_after,
                    remaining=deadline - self.clock.monotonic(),
                    breaker=breaker,
                )
                if decision.retry:
                    self.gate.release(realm, admission, Outcome.FAILURE)
                    response.release()
                    self.metrics.upstream_retries.labels(cause=decision.why).inc()
                    await self.clock.sleep(decision.delay)
                    continue
            return Exchange(
                response, admission, fault, error_body, _outcome_for(fault), retry_after
            )

    def _settle(self, realm_id: str, exchange: Exchange) -> None:
        self.gate.release(realm_id, exchange.admission, exchange.outcome, exchange.retry_after)

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
                    self._settle(target.realm_id, exchange)
                    raise UpstreamUnavailable("QBO broke off the response") from exc
                if slot is not None and exchange.fault is FaultClass.OK:
                    await self._store(slot, upstream.status, headers, exchange.body)
            if exchange.body is not None:
                self._settle(target.realm_id, exchange)
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
                self._settle(target.realm_id, exchange)
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
            exchange = await self._exchange("GET", target, headers, None, deadline, rec)
            try:
                await exchange.response.read()
            finally:
                status = exchange.response.status
                self._settle(realm_id, exchange)
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


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                break
            chunks.append(chunk)
    except (aiohttp.ClientError, TimeoutError):
        pass  # a broken error body is still an error; classify what arrived
    return b"".join(chunks)


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
