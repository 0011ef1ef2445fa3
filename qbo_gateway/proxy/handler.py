"""The reverse-proxy handler: the way of one request through the gateway.

    path check -> caller -> body (bounded) -> [read cache around] one logical QBO call
    -> relay -> access log

The read cache (`cache.read_through.ReadThrough`) wraps the call: it may answer without
QBO (fresh hit), share one call among concurrent misses, store the answer, and answer a
failure with a stored read. The handler only relays what comes back. Every refusal is a
`GatewayError` rendered as a QBO-shaped fault.
"""

from __future__ import annotations

import time
import uuid

from aiohttp import web
from multidict import CIMultiDict

from qbo_gateway.admission.retry import RetryPolicy
from qbo_gateway.cache.read_through import BudgetGuard, ReadThrough
from qbo_gateway.cache.response_cache import ResponseCache
from qbo_gateway.clock import Clock
from qbo_gateway.economy.freshness import EntityFreshness
from qbo_gateway.edge.answers import refuse_method
from qbo_gateway.faults import (
    CircuitOpen,
    GatewayError,
    PayloadTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
    render_fault,
)
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import NullObserver, Observer
from qbo_gateway.proxy.access_log import AccessLog, RequestRecord
from qbo_gateway.proxy.callers import Caller, CallerRegistry, presented_key
from qbo_gateway.proxy.exchange import (
    AdmissionGate,
    CallMeter,
    QboCaller,
    QboRequest,
    TokenSource,
)
from qbo_gateway.proxy.paths import Target, check_path, forward_headers, is_read
from qbo_gateway.proxy.relay import Relay, relay
from qbo_gateway.proxy.upstream import Upstream
from qbo_gateway.request_ids import request_id_of

_CHUNK = 64 * 1024


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
        gate: AdmissionGate,
        retry: RetryPolicy,
        cache: ResponseCache,
        max_body_bytes: int,
        request_timeout: float,
        observer: Observer | None = None,
        meter: CallMeter | None = None,
        guard: BudgetGuard | None = None,
        freshness: EntityFreshness | None = None,
    ) -> None:
        self.callers = callers
        self.clock = clock
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
            meter=meter,
        )
        self.reads = ReadThrough(cache, self.caller, guard, freshness)
        self.access = AccessLog(metrics=metrics, observer=self.observer)
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout

    async def handle(self, request: web.Request) -> web.StreamResponse:
        refused = refuse_method(request)
        if refused is not None:
            return refused
        started = time.perf_counter()
        rec = RequestRecord(request_id=request_id_of(request.headers), method=request.method)
        response: web.StreamResponse
        try:
            target = check_path(request.raw_path)
            rec.realm_id, rec.path = target.realm_id, target.rest
            caller = self.callers.authenticate(request.headers)
            rec.caller = caller.name
            self.callers.authorize(caller, target.realm_id)
            body = await self._read_body(request)
            req = self._outgoing(request, target, body, caller)
            answer = await self.reads.send(req, request.headers.get("Cache-Control"), rec)
            response = await relay(request, answer, rec) if isinstance(answer, Relay) else answer
        except GatewayError as err:
            response = self._refusal(err, rec)
        response.headers.setdefault("X-Request-Id", rec.request_id)
        response.headers.setdefault("Cache-Status", rec.cache_status)
        try:
            if not response.prepared:
                await response.prepare(request)
            if isinstance(response, web.Response):
                # The body was set on the Response: send it now, before the bookkeeping
                # below (aiohttp's own write_eof after the handler returns is then a no-op).
                await response.write_eof()
        except ConnectionError:
            # The caller left before its answer was written: still one summary line (and
            # no error log with a traceback); aiohttp takes the rest as a disconnect.
            pass
        rec.status = response.status
        self.access.finish(rec, time.perf_counter() - started)
        for work in rec.after_reply:
            await work()
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

    def _outgoing(
        self, request: web.Request, target: Target, body: bytes | None, caller: Caller
    ) -> QboRequest:
        read = is_read(request.method, target.rest)
        if not read:
            # One requestid per logical write, kept across retries, so QBO can de-duplicate.
            target = target.with_requestid(lambda: uuid.uuid4().hex)
        deadline = self.clock.monotonic() + self.request_timeout
        withhold = None if self.callers.open_mode else presented_key(request.headers)
        headers = forward_headers(request.headers, withhold=withhold)
        return QboRequest(
            request.method,
            target,
            headers,
            body,
            deadline,
            read,
            caller=caller.name,
            background=caller.background,
        )

    # --- monitor probes ----------------------------------------------------------------

    async def probe(self, realm_id: str) -> int:
        """A `companyinfo` read through the same admission, token and upstream path."""
        target = Target(realm_id, f"companyinfo/{realm_id}", "")
        rec = RequestRecord(request_id=f"probe-{uuid.uuid4().hex[:12]}", method="GET")
        rec.realm_id = realm_id
        headers: CIMultiDict[str] = CIMultiDict({"Accept": "application/json"})
        deadline = self.clock.monotonic() + self.request_timeout
        req = QboRequest("GET", target, headers, None, deadline, read=True, probe=True)
        started = time.perf_counter()
        status = 0
        try:
            exchange = await self.caller.call(req, rec)
            try:
                async with exchange.within_deadline():
                    await exchange.response.read()
            finally:
                status = exchange.response.status
                exchange.close()
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
