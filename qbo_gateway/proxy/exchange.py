"""One logical call to QBO: admission per attempt, the realm's token, retries, 401 replay.

`QboCaller.call` returns an `Exchange`: QBO's answer (headers received; an error body read
and classified) with its admission slot still held, so the caller can stream the body and
then `settle` it, which frees the slot and feeds the outcome to the breaker. Every attempt
is admitted again (a retry is another request QBO sees); a 401 is answered with a token
refresh and one replay; failures are retried only as `retry.RetryPolicy` allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import aiohttp
from multidict import CIMultiDict

from qbo_gateway.admission.records import Admission, BreakerState, Outcome, Verdict
from qbo_gateway.admission.retry import Failure, RetryPolicy
from qbo_gateway.clock import Clock
from qbo_gateway.faults import FaultClass, GatewayError, UpstreamTimeout, classify
from qbo_gateway.metrics import Metrics
from qbo_gateway.proxy.access_log import RequestRecord
from qbo_gateway.proxy.paths import Target
from qbo_gateway.proxy.upstream import Upstream, UpstreamConnectError, UpstreamRequest

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


class QboCaller:
    def __init__(
        self,
        *,
        api_base: str,
        minor_version: str,
        tokens: TokenSource,
        upstream: Upstream,
        clock: Clock,
        metrics: Metrics,
        gate: AdmissionGate | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.minor_version = minor_version
        self.tokens = tokens
        self.upstream = upstream
        self.clock = clock
        self.metrics = metrics
        self.gate = gate or OpenGate()
        self.retry = retry or RetryPolicy()

    async def call(
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
                # Released above; a placeholder that `settle` records nothing for.
                admission = Admission(verdict=Verdict.REFUSE)
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

    def settle(self, realm_id: str, exchange: Exchange) -> None:
        self.gate.release(realm_id, exchange.admission, exchange.outcome, exchange.retry_after)


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
