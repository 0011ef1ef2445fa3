"""The response cache behind degraded mode: what is stored, under which key, when served.

When QBO fails for a realm (circuit open, throttled, 5xx, timeout, reconnect required) a
caller reading data is better served by the last good answer, clearly marked, than by an
error. Optionally (QBO_CACHE_FRESH_SECONDS > 0) young answers are served without asking QBO
at all. This module holds the decisions in plain Python; a `CacheBackend` (in-process LRU or
Redis) only keeps entries. Keys always include the realm, so no read can cross tenants.
Every answer the proxy sends carries an RFC 9211 `Cache-Status` built here.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import structlog
from aiohttp import web
from multidict import CIMultiDict

from qbo_gateway.cache.records import CacheBackend, CachedEntry
from qbo_gateway.clock import Clock
from qbo_gateway.faults import (
    CircuitOpen,
    FaultClass,
    RateLimited,
    ReconnectRequired,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify,
    parse_fault,
)
from qbo_gateway.metrics import Metrics
from qbo_gateway.observe import Observer
from qbo_gateway.state.errors import StateUnavailable

__all__ = [
    "CACHE_NAME",
    "DEGRADED_REASONS",
    "CacheBackend",
    "CacheKey",
    "CacheLookup",
    "CachedEntry",
    "ResponseCache",
    "allows_fresh",
    "allows_stale",
    "allows_store",
    "cache_status_for_upstream",
    "degraded_reason",
    "degraded_reason_for_upstream",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

CACHE_NAME = "qbo-gateway"
DEGRADED_HEADER = "X-QBO-Gateway-Degraded"
DEGRADED_REASONS = frozenset(
    {"circuit-open", "upstream-error", "upstream-timeout", "rate-limited", "reconnect-required"}
)
# Reasons where the request did go to QBO and came back failed: Cache-Status says fwd=stale.
_FORWARDED_REASONS = frozenset({"upstream-error", "upstream-timeout"})

# requestid is unique per call (idempotency), so keeping it would make every read a miss;
# minorversion is left out because the gateway adds the configured one to calls without it,
# and a caller naming the same version explicitly asks for the same answer.
_IGNORED_QUERY_PARAMS = frozenset({"requestid", "minorversion"})
# Only what describes the body travels with a stored read: never Set-Cookie, intuit_tid
# (it names the original upstream call) or hop-by-hop headers.
_CONTENT_HEADERS = frozenset(
    {
        "content-type",
        "content-encoding",
        "content-language",
        "content-disposition",
        "etag",
        "last-modified",
    }
)
# The proxy sends Accept: application/json when the caller sent none, so both are one read.
_DEFAULT_ACCEPT = "application/json"


@dataclass(frozen=True)
class CacheKey:
    """A stored read's identity: the realm in clear (for scoping) and a digest of the rest."""

    realm_id: str
    digest: str


@dataclass(frozen=True)
class CacheLookup:
    """What a lookup found, and the realm's freshness epoch before going upstream.

    Pass `epoch` back to `store`, so a read that raced a write is stored as already stale.
    """

    entry: CachedEntry | None
    epoch: int | None


def _directives(cache_control: str | None) -> dict[str, str]:
    if not cache_control:
        return {}
    found: dict[str, str] = {}
    for part in cache_control.split(","):
        name, _, value = part.partition("=")
        found[name.strip().lower()] = value.strip().strip('"')
    return found


def allows_stale(request_cache_control: str | None) -> bool:
    """A caller sending `Cache-Control: no-cache` wants QBO's answer or the error."""
    return "no-cache" not in _directives(request_cache_control)


def allows_fresh(request_cache_control: str | None) -> bool:
    """`no-cache` or `max-age=0` asks for QBO's own answer, not a young stored one."""
    directives = _directives(request_cache_control)
    return "no-cache" not in directives and directives.get("max-age") != "0"


def allows_store(request_cache_control: str | None) -> bool:
    return "no-store" not in _directives(request_cache_control)


def degraded_reason(error: BaseException) -> str | None:
    """The degraded-mode reason a gateway failure allows, or None when stale must not help."""
    if isinstance(error, CircuitOpen):
        return "circuit-open"
    if isinstance(error, RateLimited):
        return "rate-limited"
    if isinstance(error, UpstreamTimeout):
        return "upstream-timeout"
    if isinstance(error, UpstreamUnavailable):
        return "upstream-error"
    if isinstance(error, ReconnectRequired):
        return "reconnect-required"
    return None


def degraded_reason_for_upstream(status: int, body: bytes | None = None) -> str | None:
    """The reason for an upstream answer (after retries) that a stored read may replace."""
    fault = classify(status, body)
    if fault is FaultClass.UPSTREAM_FAILURE:
        return "upstream-error"
    if fault is FaultClass.THROTTLE:
        return "rate-limited"
    return None


def cache_status_for_upstream(
    stored: bool, cacheable: bool, *, fwd: str = "uri-miss", detail: str | None = None
) -> str:
    """Cache-Status for an answer that did not come from the cache.

    `cacheable` False (writes, anything not a read) gives `fwd=bypass`; `fwd` names why a
    read went upstream (`uri-miss`, `stale`, `request`; see `ResponseCache.forward_reason`).
    """
    parts = [CACHE_NAME, f"fwd={fwd if cacheable else 'bypass'}"]
    if stored and cacheable:
        parts.append("stored")
    if detail:
        parts.append(f"detail={detail}")
    return "; ".join(parts)


def _utf8(text: str) -> bytes:
    # surrogatepass: a caller's odd percent-encoding must give a key, never an exception.
    return text.encode("utf-8", "surrogatepass")


def _length_prefixed(parts: Iterable[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


def _pairs(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> Iterable[tuple[str, str]]:
    if isinstance(headers, Mapping):
        return cast(Iterable[tuple[str, str]], headers.items())
    return headers


class ResponseCache:
    """The policy the proxy calls; see the module docstring for why it exists."""

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
        self._flights: dict[CacheKey, asyncio.Future[Any]] = {}

    @property
    def enabled(self) -> bool:
        return self.fresh_seconds > 0 or self.stale_seconds > 0

    # --- what is a read, and its key ------------------------------------------------------

    @staticmethod
    def is_read(method: str, path_rest: str) -> bool:
        """GET, or a POST to .../query (QBO's query endpoint reads, whatever the verb)."""
        verb = method.upper()
        if verb == "GET":
            return True
        if verb != "POST":
            return False
        path = path_rest.split("?", 1)[0].rstrip("/")
        return path.rsplit("/", 1)[-1].lower() == "query"

    @staticmethod
    def key_for(
        realm_id: str,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]],
        body: bytes,
        accept: str | None,
    ) -> CacheKey:
        canonical_query = sorted(
            (name, value) for name, value in query if name.lower() not in _IGNORED_QUERY_PARAMS
        )
        material = _length_prefixed(
            [
                b"qbo-gateway-cache-v1",
                _utf8(realm_id),
                _utf8(method.upper()),
                _utf8(path),
                _length_prefixed(
                    _length_prefixed([_utf8(n), _utf8(v)]) for n, v in canonical_query
                ),
                hashlib.sha256(body).digest(),
                _utf8((accept or "").strip() or _DEFAULT_ACCEPT),
            ]
        )
        return CacheKey(realm_id, hashlib.sha256(material).hexdigest())

    # --- lookup and judgement ---------------------------------------------------------

    async def lookup(self, key: CacheKey) -> CacheLookup:
        """Never fails: an unreachable or corrupt backend is a miss."""
        if not self.enabled:
            return CacheLookup(None, None)
        try:
            entry, epoch = await self.backend.get(key.realm_id, key.digest)
        except (StateUnavailable, ValueError) as exc:  # ValueError: CorruptEntry, bad epoch
            log.debug("cache_lookup_failed", error=type(exc).__name__)
            self._event("miss")
            return CacheLookup(None, None)
        if entry is not None and entry.realm_id != key.realm_id:
            entry = None
        self._event("hit" if entry is not None else "miss")
        return CacheLookup(entry, epoch)

    def fresh(self, entry: CachedEntry) -> bool:
        """Young enough to serve without asking QBO, and no write to the realm since."""
        return (
            self.fresh_seconds > 0
            and entry.age(self._clock.now()) < self.fresh_seconds
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

    def storable(
        self, status: int, body: bytes, *, request_cache_control: str | None = None
    ) -> bool:
        """Only a plain success, small enough, that the caller let us keep."""
        return (
            self.enabled
            and status == 200
            and len(body) <= self.max_entry_bytes
            and allows_store(request_cache_control)
            and parse_fault(body) is None
        )

    async def store(
        self,
        key: CacheKey,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        *,
        request_cache_control: str | None,
        epoch: int | None = None,
    ) -> bool:
        """Store a read's answer if storable; True when stored. Never fails.

        `epoch` is `CacheLookup.epoch` from before the upstream call; without it the
        current epoch is read, and a write that finished during this read goes unseen.
        """
        if not self.storable(status, body, request_cache_control=request_cache_control):
            self._event("skip")
            return False
        kept = tuple((k, v) for k, v in _pairs(headers) if k.lower() in _CONTENT_HEADERS)
        try:
            if epoch is None and self.fresh_seconds <= 0:
                # Without freshness nothing is ever served young, so no epoch is read (one
                # Redis round trip less per read); -1 matches no realm epoch, so even a
                # replica configured with freshness never takes this entry as fresh.
                epoch = -1
            elif epoch is None:
                epoch = await self.backend.epoch(key.realm_id)
            entry = CachedEntry(
                realm_id=key.realm_id,
                status=status,
                headers=kept,
                body=body,
                stored_at=self._clock.now(),
                fresh_epoch=epoch,
            )
            stored = await self.backend.put(
                key.realm_id,
                key.digest,
                entry,
                ttl=max(self.fresh_seconds, self.stale_seconds),
            )
        except StateUnavailable as exc:
            log.debug("cache_store_failed", error=type(exc).__name__)
            stored = False
        self._event("store" if stored else "skip")
        return stored

    async def end_freshness(self, realm_id: str) -> None:
        """After a successful write: the realm's stored reads stay servable only as stale."""
        # Also while freshness is off: a replica (or a restart) with it on must not find
        # reads stored before this write still fresh.
        if not self.enabled:
            return
        try:
            await self.backend.end_freshness(realm_id)
        except StateUnavailable as exc:
            # Without the shared epoch, replicas may serve a pre-write read as fresh for at
            # most fresh_seconds; the write itself has succeeded and must not fail.
            log.warning("cache_end_freshness_failed", realm_id=realm_id, error=type(exc).__name__)

    # --- single flight ------------------------------------------------------------------

    async def fetch_once(self, key: CacheKey, fetch: Callable[[], Awaitable[T]]) -> T:
        """Concurrent fresh misses of one key share one upstream call (freshness on only).

        The shared call runs as its own task, so one caller going away does not cancel it for
        the others; every caller gets the same result (so `T` should be plain data: status,
        headers, body bytes) or the same exception. Do the `store` inside `fetch`, so a caller
        arriving just after the call finishes finds the entry instead of starting another.
        """
        if self.fresh_seconds <= 0:
            return await fetch()
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(fetch())
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._land(key, done))
        return cast(T, await asyncio.shield(flight))

    def _land(self, key: CacheKey, done: asyncio.Future[Any]) -> None:
        if self._flights.get(key) is done:
            del self._flights[key]
        if not done.cancelled():
            done.exception()  # retrieved here so a flight nobody awaits anymore logs nothing

    # --- answers from the cache ---------------------------------------------------------

    def hit_response(self, entry: CachedEntry) -> web.Response:
        """A fresh entry served without asking QBO."""
        age = entry.age(self._clock.now())
        ttl = max(0, math.floor(self.fresh_seconds - age))
        headers = self._entry_headers(entry, age)
        headers["Cache-Status"] = f"{CACHE_NAME}; hit; ttl={ttl}"
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
        if fwd_status is not None or reason in _FORWARDED_REASONS:
            status_part = f"; fwd-status={fwd_status}" if fwd_status is not None else ""
            cache_status = f"{CACHE_NAME}; fwd=stale{status_part}; ttl={ttl}; detail={reason}"
        else:
            cache_status = f"{CACHE_NAME}; hit; ttl={ttl}; detail={reason}"
        headers["Cache-Status"] = cache_status
        self._metrics.stale_served.labels(reason=reason).inc()
        self._observer.stale_served(entry.realm_id, reason=reason, age=age)
        return web.Response(status=entry.status, body=entry.body, headers=headers)

    def _entry_headers(self, entry: CachedEntry, age: float) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict(entry.headers)
        headers["Age"] = str(math.floor(age))
        return headers

    def _event(self, event: str) -> None:
        self._metrics.cache_events.labels(event=event).inc()
