"""One summary line, the request metrics and the realm's verdict, per proxied request.

Every request the proxy answers ends here exactly once, whatever path it took: the
`RequestRecord` collects what happened on the way and `AccessLog.finish` turns it into the
`request` log line (never the query: it holds customers' SQL), the `qbo_gateway_requests_*`
metrics and, when the answer says something about the realm, an observer event.
It runs on every request, so it is kept cheap: the labelled metric children are looked up
once per label set, and the line goes through `logs.access_line` (orjson, paths scrubbed
through a memo).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from qbo_gateway.faults import FaultClass
from qbo_gateway.logs import access_line
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import Observer

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Refusals that say something about the realm's health (the others are the caller's).
_REALM_REFUSALS = frozenset({"GW-RATE-LIMITED", "GW-CIRCUIT-OPEN", "GW-RECONNECT-REQUIRED"})
# Fields of the line whose text comes from the caller or from QBO: only these can carry a
# secret (a key pasted into a path or a request id); the rest are the gateway's own. A
# request id is unique per request; paths and upstream ids recur (scrubbed through a memo).
_UNTRUSTED = ("request_id",)
_RECURRING = ("path", "intuit_tid")


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
    # Work that needs the answer but not the caller's time (storing a read): run after the
    # reply is sent, in order.
    after_reply: list[Callable[[], Awaitable[object]]] = field(default_factory=list)


class AccessLog:
    def __init__(self, *, metrics: Metrics, observer: Observer) -> None:
        self.metrics = metrics
        self.observer = observer
        # prometheus_client's labels() takes a lock and builds a key on every call.
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._histograms: dict[str, Any] = {}

    def finish(self, rec: RequestRecord, seconds: float) -> None:
        method = rec.method if rec.method in _METHODS else "OTHER"
        code = rec.code or str(rec.status)
        self._count(method, rec.outcome, code)
        self._observe(rec.outcome, seconds)
        realm_verdict = rec.outcome != "rejected" or rec.code in _REALM_REFUSALS
        if rec.realm_id and realm_verdict:
            self.observer.request_finished(
                rec.realm_id,
                outcome=rec.outcome,
                status=rec.status,
                latency=rec.upstream_seconds or seconds,
                fault=rec.fault,
            )
        access_line(
            {
                "event": "request",
                "request_id": rec.request_id,
                "realm_id": rec.realm_id,
                "caller": rec.caller,
                "method": rec.method,
                "path": rec.path,  # the query is never logged: it holds customers' SQL
                "status": rec.status,
                "outcome": rec.outcome,
                "code": rec.code or None,
                "duration_ms": round(seconds * 1000, 2),
                "upstream_ms": round(rec.upstream_seconds * 1000, 2),
                "attempts": rec.attempts,
                "intuit_tid": rec.intuit_tid,
                "degraded": rec.degraded,
                "cache_status": rec.cache_status,
            },
            untrusted=_UNTRUSTED,
            recurring=_RECURRING,
        )

    def _count(self, method: str, outcome: str, code: str) -> None:
        labels = (method, outcome, code)
        child = self._counters.get(labels)
        if child is None:
            child = self.metrics.requests.labels(method=method, outcome=outcome, code=code)
            self._counters[labels] = child
        child.inc()

    def _observe(self, outcome: str, seconds: float) -> None:
        child = self._histograms.get(outcome)
        if child is None:
            child = self.metrics.request_duration.labels(outcome=outcome)
            self._histograms[outcome] = child
        child.observe(seconds)
