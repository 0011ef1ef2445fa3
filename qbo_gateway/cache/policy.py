"""What the read cache may do, as plain decisions: keys, the caller's wishes, reasons, labels.

No I/O here. A stored read's key always holds the realm (in clear, for scoping, and inside
the digest), so no read can be served across tenants; the caller's `Cache-Control` decides
whether a young entry may answer, whether a stale one may cover a failure and whether the
answer may be kept; a gateway failure or a failed QBO answer maps to the degraded reason an
answer from the cache names; every answer carries an RFC 9211 `Cache-Status` built here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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

CACHE_NAME = "qbo-gateway"
DEGRADED_HEADER = "X-QBO-Gateway-Degraded"
DEGRADED_REASONS = frozenset(
    {"circuit-open", "upstream-error", "upstream-timeout", "rate-limited", "reconnect-required"}
)
# Reasons where the request did go to QBO and came back failed: Cache-Status says fwd=stale.
FORWARDED_REASONS = frozenset({"upstream-error", "upstream-timeout"})

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


# Most reads (every GET) have no body: its digest is the same for all of them.
_EMPTY_BODY_DIGEST = hashlib.sha256(b"").digest()


def _utf8(text: str) -> bytes:
    # surrogatepass: a caller's odd percent-encoding must give a key, never an exception.
    return text.encode("utf-8", "surrogatepass")


def _length_prefixed(parts: Iterable[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


def key_for(
    realm_id: str,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    body: bytes,
    accept: str | None,
) -> CacheKey:
    """One read's key; the query's order and its `requestid`/`minorversion` do not count."""
    canonical_query = sorted(
        (name, value) for name, value in query if name.lower() not in _IGNORED_QUERY_PARAMS
    )
    material = _length_prefixed(
        [
            b"qbo-gateway-cache-v1",
            _utf8(realm_id),
            _utf8(method.upper()),
            _utf8(path),
            _length_prefixed(_length_prefixed([_utf8(n), _utf8(v)]) for n, v in canonical_query),
            hashlib.sha256(body).digest() if body else _EMPTY_BODY_DIGEST,
            _utf8((accept or "").strip() or _DEFAULT_ACCEPT),
        ]
    )
    return CacheKey(realm_id, hashlib.sha256(material).hexdigest())


def query_pairs(query: str) -> list[tuple[str, str]]:
    """A raw query string's (name, value) pairs, undecoded (the key needs no decoding)."""
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((name, value))
    return pairs


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


def storable(
    status: int, body: bytes, *, max_entry_bytes: int, request_cache_control: str | None
) -> bool:
    """Only a plain success, small enough, that the caller let us keep."""
    return (
        status == 200
        and len(body) <= max_entry_bytes
        and allows_store(request_cache_control)
        and parse_fault(body, success=True) is None
    )


def content_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    """The headers a stored read keeps: those describing its body."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((k, v) for k, v in pairs if k.lower() in _CONTENT_HEADERS)


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
