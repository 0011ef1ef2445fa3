"""One logical call to QBO: admission per attempt, the realm's token, retries, 401 replay.

`QboCaller.call` returns an `Exchange`: QBO's answer (headers received; an error body read
and classified) with its admission slot still held, so the caller can stream the body and
then `settle` it, which frees the slot and feeds the outcome to the breaker. Every attempt
is admitted again (a retry is another request QBO sees); a 401 is answered with a token
refresh and one replay; failures are retried only as `retry.RetryPolicy` allows.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from qbo_gateway.admission.records import Admission, BreakerState, Outcome, Verdict
from qbo_gateway.admission.retry import Failure, RetryPlan, RetryPolicy
from qbo_gateway.clock import Clock
from qbo_gateway.faults import (
    FaultClass,
    GatewayError,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify,
)
from qbo_gateway.metrics import Metrics
from qbo_gateway.proxy.access_log import RequestRecord
from qbo_gateway.proxy.paths import Target, returned_headers
from qbo_gateway.proxy.upstream import Upstream, UpstreamConnectError, UpstreamRequest

_URLS_REMEMBERED = 1024
_ERROR_BODY_LIMIT = 1024 * 1024  # QBO error bodies are small; never hold more to classify one
_CHUNK = 64 * 1024


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


class CallMeter(Protocol):
    """Counts each call QBO answers (`economy.meter.Meter`); no I/O on the way."""

    def count(
        self, realm_id: str, caller: str, rest: str, *, coreplus: bool, probe: bool
    ) -> None: ...


class _NoMeter:
    def count(self, realm_id: str, caller: str, rest: str, *, coreplus: bool, probe: bool) -> None:
        return None


@dataclass(frozen=True)
class QboRequest:
    """What is sent to QBO for one caller request, the same for every attempt."""

    method: str
    target: Target
    headers: CIMultiDict[str]
    body: bytes | None
    deadline: float  # on the injected clock's monotonic time
    read: bool  # safe to repeat and to cache (`paths.is_read`)
    caller: str = ""  # the caller's name, for the meter
    probe: bool = False  # the gateway's own monitor probe
    background: bool = False  # the caller is marked background (the read guard may refuse)


def _no_deadline() -> float:
    return math.inf


@dataclass
class Exchange:
    """An upstream answer whose admission slot is still held until its body is done.

    `time_left` says how much of the request's deadline remains: the deadline covers the
    whole answer, body included, so every read of the body is bounded by it.
    """

    response: aiohttp.ClientResponse
    admission: Admission
    fault: FaultClass
    body: bytes | None  # set when the body was read to classify it
    outcome: Outcome
    realm_id: str
    gate: AdmissionGate
    retry_after: float | None = None
    time_left: Callable[[], float] = _no_deadline

    def within_deadline(self) -> asyncio.Timeout:
        """A scope that ends when the request's deadline passes (TimeoutError)."""
        left = self.time_left()
        return asyncio.timeout(None if math.isinf(left) else left)

    def settle(self) -> None:
        """Free the admission slot and report the outcome; once the body is done."""
        self.gate.release(self.realm_id, self.admission, self.outcome, self.retry_after)

    def close(self) -> None:
        """Settle and give the connection back, the body unread (an answer not relayed)."""
        self.settle()
        self.response.release()

    async def read_body(self) -> bytes:
        """The whole body, within the deadline; a failed read is charged to the realm."""
        if self.body is not None:
            return self.body
        try:
            if self.response.content.is_eof():
                # All of it has arrived already (a small answer usually comes with its
                # headers): nothing to wait for, so no deadline timer to arm.
                self.body = await self.response.read()
            else:
                async with self.within_deadline():
                    self.body = await self.response.read()
        except TimeoutError as exc:
            self.outcome = Outcome.FAILURE
            raise UpstreamTimeout("The request deadline passed while QBO's answer arrived") from exc
        except aiohttp.ClientError as exc:
            self.outcome = Outcome.FAILURE
            raise UpstreamUnavailable("QBO broke off the response") from exc
        return self.body

    async def read_whole(self) -> tuple[list[tuple[str, str]], bytes]:
        """QBO's whole answer: the headers to return, and the body.

        The exchange is settled and released however the read ends.
        """
        try:
            body = await self.read_body()
            return list(returned_headers(self.response.headers).items()), body
        finally:
            self.close()


@dataclass
class _Attempt:
    """One admitted attempt: its slot, the token it carries, the breaker it saw."""

    admission: Admission
    token: str
    breaker: BreakerState


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


class QboCaller:
    """Sends one logical request to QBO; the gate and the retry policy are always given."""

    def __init__(
        self,
        *,
        api_base: str,
        minor_version: str,
        tokens: TokenSource,
        upstream: Upstream,
        clock: Clock,
        metrics: Metrics,
        gate: AdmissionGate,
        retry: RetryPolicy,
        meter: CallMeter | None = None,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.meter: CallMeter = meter or _NoMeter()
        self.minor_version = minor_version
        self.tokens = tokens
        self.upstream = upstream
        self.clock = clock
        self.metrics = metrics
        self.gate = gate
        self.retry = retry
        self._durations: dict[str, Any] = {}  # labelled children: labels() locks every call
        self._urls: dict[Target, URL] = {}  # reads recur: their upstream URL is built once

    async def call(self, req: QboRequest, rec: RequestRecord) -> Exchange:
        realm = req.target.realm_id
        # The token lookup is what says a realm is unknown: asked before anything else, so an
        # unknown realm id (the caller's to invent) creates no admission or retry state.
        known: str | None = await self.tokens.access_token(realm)
        plan = self.retry.start(realm, read=req.read)
        auth_replayed = False
        while True:
            attempt = await self._admit(req, known)
            known = None  # a retry or a replay asks again: the token may have changed
            sent = await self._send(req, attempt, plan, rec)
            if sent is None:
                continue  # a connection failure the plan retries
            response, elapsed = sent
            exchange = await self._received(req, response, attempt, rec, elapsed)
            if exchange.fault is FaultClass.AUTHENTICATION and not auth_replayed:
                # An expired or revoked access token says nothing about QBO's health.
                self.gate.release(realm, attempt.admission, Outcome.ABANDONED)
                try:
                    fresh = await self.tokens.after_unauthorized(realm, attempt.token)
                except BaseException:
                    response.release()
                    raise
                if fresh is not None:
                    response.release()
                    auth_replayed = True
                    continue
                # Released above; a placeholder that `settle` records nothing for.
                exchange.admission = Admission(verdict=Verdict.REFUSE)
            failed = exchange.fault is FaultClass.UPSTREAM_FAILURE
            if failed and await self._retried_status(exchange, plan, attempt.breaker, req):
                continue
            return exchange

    async def _admit(self, req: QboRequest, token: str | None) -> _Attempt:
        realm = req.target.realm_id
        admission = await self.gate.acquire(realm, batch=req.target.is_batch, deadline=req.deadline)
        try:
            token = token or await self.tokens.access_token(realm)
        except BaseException:
            self.gate.release(realm, admission, Outcome.ABANDONED)
            raise
        breaker = BreakerState.HALF_OPEN if admission.probe else BreakerState.CLOSED
        return _Attempt(admission, token, breaker)

    async def _send(
        self, req: QboRequest, attempt: _Attempt, plan: RetryPlan, rec: RequestRecord
    ) -> tuple[aiohttp.ClientResponse, float] | None:
        """One attempt's answer and its time; None when it failed and is to be retried."""
        out = req.headers.copy()
        out["Authorization"] = f"Bearer {attempt.token}"
        url = self._url(req)
        rec.attempts += 1
        t0 = self.clock.monotonic()
        try:
            response = await self.upstream.send(
                UpstreamRequest(req.method, url, out, req.body),
                budget=req.deadline - self.clock.monotonic(),
            )
        except GatewayError as err:
            elapsed = self.clock.monotonic() - t0
            rec.upstream_seconds += elapsed
            result = "timeout" if isinstance(err, UpstreamTimeout) else "connection_error"
            self._observe(result, elapsed)
            rec.fault = FaultClass.UPSTREAM_FAILURE
            self.gate.release(req.target.realm_id, attempt.admission, Outcome.FAILURE)
            refused = isinstance(err, UpstreamConnectError)
            decision = plan.after_failure(
                Failure.REFUSED if refused else Failure.CONNECTION,
                remaining=req.deadline - self.clock.monotonic(),
                breaker=attempt.breaker,
            )
            if not decision.retry:
                raise
            self.metrics.upstream_retries.labels(cause=decision.why).inc()
            await self.clock.sleep(decision.delay)
            return None
        elapsed = self.clock.monotonic() - t0
        rec.upstream_seconds += elapsed
        # Every attempt QBO answered is a call Intuit counts, retries and replays included.
        target = req.target
        self.meter.count(
            target.realm_id, req.caller, target.rest, coreplus=req.read, probe=req.probe
        )
        return response, elapsed

    async def _received(
        self,
        req: QboRequest,
        response: aiohttp.ClientResponse,
        attempt: _Attempt,
        rec: RequestRecord,
        elapsed: float,
    ) -> Exchange:
        """Classify an answer (reading an error body, bounded) into an `Exchange`."""
        rec.intuit_tid = response.headers.get("intuit_tid") or rec.intuit_tid
        error_body: bytes | None = None
        if response.status >= 400:
            error_body = await _read_bounded(
                response, _ERROR_BODY_LIMIT, req.deadline - self.clock.monotonic()
            )
        fault = classify(response.status, error_body)
        rec.fault = fault
        self._observe(fault.value, elapsed)
        return Exchange(
            response,
            attempt.admission,
            fault,
            error_body,
            _outcome_for(fault),
            req.target.realm_id,
            self.gate,
            _retry_after(response.headers),
            time_left=lambda: req.deadline - self.clock.monotonic(),
        )

    def _url(self, req: QboRequest) -> URL:
        target = req.target
        if not req.read:  # a write's query holds its own requestid: never seen again
            return target.upstream_url(self.api_base, self.minor_version)
        url = self._urls.get(target)
        if url is None:
            if len(self._urls) >= _URLS_REMEMBERED:
                self._urls.clear()
            url = self._urls[target] = target.upstream_url(self.api_base, self.minor_version)
        return url

    def _observe(self, result: str, seconds: float) -> None:
        child = self._durations.get(result)
        if child is None:
            child = self._durations[result] = self.metrics.upstream_duration.labels(result=result)
        child.observe(seconds)

    async def _retried_status(
        self, exchange: Exchange, plan: RetryPlan, breaker: BreakerState, req: QboRequest
    ) -> bool:
        """True when a failed status is retried (the attempt released, the delay slept)."""
        decision = plan.after_failure(
            Failure.STATUS,
            status=exchange.response.status,
            retry_after=exchange.retry_after,
            remaining=req.deadline - self.clock.monotonic(),
            breaker=breaker,
        )
        if not decision.retry:
            return False
        self.gate.release(exchange.realm_id, exchange.admission, Outcome.FAILURE)
        exchange.response.release()
        self.metrics.upstream_retries.labels(cause=decision.why).inc()
        await self.clock.sleep(decision.delay)
        return True


async def _read_bounded(response: aiohttp.ClientResponse, limit: int, seconds: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(max(0.0, seconds)):  # the request's deadline bounds it too
            async for chunk in response.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
    except (aiohttp.ClientError, TimeoutError):
        pass  # a broken or late error body is still an error; classify what arrived
    return b"".join(chunks)
